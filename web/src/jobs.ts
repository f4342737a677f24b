// What the jobs pages show of a job, worked out without the DOM: its state and progress in
// words, its run, the queue merged with a fresh first page, and the "New training" form read
// into a SubmitTrainingRequest (or the fields it gets wrong).

import type { FieldViolation } from "./api";
import type { BuiltinDataset, Job, JobState, SubmitTrainingRequest, TrainingBackend } from "./jobs_api";

/** The states a job can still leave: it is worth following (and cancelling). */
export const isActive = (state: JobState | undefined): boolean =>
  state === "JOB_STATE_QUEUED" || state === "JOB_STATE_RUNNING";

/** "JOB_STATE_RUNNING" -> "running". */
export const stateName = (state: JobState | undefined): string =>
  (state ?? "JOB_STATE_UNSPECIFIED").replace("JOB_STATE_", "").toLowerCase();

/** The tracker run the job logs to: in its details once the worker made it, and its result at the end. */
export function runIdOf(job: Job): string {
  const fromDetails = job.details?.run_id;
  if (typeof fromDetails === "string" && fromDetails) return fromDetails;
  return job.result?.startsWith("runs/") ? job.result.slice("runs/".length) : "";
}

/** Epochs finished, as the worker last wrote them. */
export function epochsDone(job: Job): number {
  const done = job.details?.epochs_done ?? job.details?.epoch;
  return typeof done === "number" && Number.isFinite(done) ? done : 0;
}

/** The epochs the training runs (the request's or the program's), once its first epoch is
 * done; 0 before, and for jobs that do not train. */
export function epochsTotal(job: Job): number {
  const total = job.details?.epochs;
  return typeof total === "number" && Number.isFinite(total) ? total : 0;
}

/** 0..1 as a whole percentage, clamped (the server's value is a double). */
export function percent(progress: number | undefined): number {
  const p = Number(progress ?? 0);
  if (!Number.isFinite(p)) return 0;
  return Math.round(Math.min(1, Math.max(0, p)) * 100);
}

/** A job's progress in words: "epoch 3/8 · 38%" (total when known), or its state before it starts. */
export function progressText(state: JobState | undefined, progress: number | undefined, epoch: number, total = 0): string {
  if (state === "JOB_STATE_QUEUED") return "waiting for a worker";
  const pct = `${percent(progress)}%`;
  if (epoch <= 0 && total <= 0) return pct;
  return `epoch ${epoch}${total > 0 ? `/${total}` : ""} · ${pct}`;
}

/** A timestamp from the API (RFC 3339) in local time, "2026-11-29 21:04:05"; "" for none. */
export function formatTime(iso: string | undefined): string {
  if (!iso) return "";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const p = (n: number) => String(n).padStart(2, "0");
  return `${t.getFullYear()}-${p(t.getMonth() + 1)}-${p(t.getDate())} ${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}`;
}

/** How long ago, roughly: "4 s ago", "3 min ago", "2 h ago", "5 d ago". */
export function ago(iso: string | undefined, now: number = Date.now()): string {
  if (!iso) return "never";
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86_400)} d ago`;
}

/**
 * The queue after re-reading its first page: the fresh jobs as they are now, then the older
 * ones already shown (pages loaded with "More"), newest first, each job once.
 */
export function mergeJobs(shown: Job[], fresh: Job[]): Job[] {
  const seen = new Set(fresh.map((j) => j.id));
  const merged = fresh.concat(shown.filter((j) => !seen.has(j.id)));
  const time = (j: Job) => Date.parse(j.create_time ?? "") || 0;
  // stable: jobs created in the same instant keep the server's order
  return merged.map((j, i) => [j, i] as const).sort((a, b) => time(b[0]) - time(a[0]) || a[1] - b[1]).map(([j]) => j);
}

// ------------------------------------------------------------------ the "New training" form

export const BACKENDS: { value: TrainingBackend; label: string }[] = [
  { value: "TRAINING_BACKEND_PYTORCH", label: "PyTorch" },
  { value: "TRAINING_BACKEND_TENSORFLOW", label: "TensorFlow" },
];

export const BUILTIN_DATASETS: { value: BuiltinDataset; label: string }[] = [
  { value: "BUILTIN_DATASET_DIGITS", label: "digits (8×8 images, 10 classes)" },
  { value: "BUILTIN_DATASET_IRIS", label: "iris (4 features, 3 classes)" },
  { value: "BUILTIN_DATASET_WINE", label: "wine (13 features, 3 classes)" },
  { value: "BUILTIN_DATASET_BREAST_CANCER", label: "breast cancer (30 features, 2 classes)" },
];

/** A program that trains on digits in seconds: what the form starts with. */
export const EXAMPLE_SOURCE = `network Digits {
  input: (64,)
  layers:
    Dense(64, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
  train {
    epochs: 8
    batch_size: 32
    validation_split: 0.2
  }
}
`;

/** The form's inputs as typed (all text), named after the request's fields. */
export interface TrainingForm {
  source: string;
  network: string;
  backend: string;
  /** "builtin:BUILTIN_DATASET_DIGITS" or "dataset:<id>" (an upload). */
  dataset: string;
  epochs: string;
  batch_size: string;
  learning_rate: string;
  experiment: string;
  webhook_url: string;
  webhook_secret: string;
}

export type FormField = keyof TrainingForm;

const FORM_FIELDS: FormField[] = [
  "source", "network", "backend", "dataset", "epochs", "batch_size", "learning_rate", "experiment",
  "webhook_url", "webhook_secret",
];

/** The form's input for a violation's field as the server names it; "" when none fits. */
export function formFieldOf(field: string): FormField | "" {
  // "source:3:5" (a program's diagnostic at its line:column), "model" (neither model nor source)
  if (field === "model" || field.startsWith("source")) return "source";
  if (field === "dataset" || field.startsWith("dataset.")) return "dataset";
  const hook = /^webhooks(\[\d+\])?(\.(\w+))?$/.exec(field);
  if (hook) return hook[3] === "secret" ? "webhook_secret" : "webhook_url";
  return (FORM_FIELDS as string[]).includes(field) ? (field as FormField) : "";
}

/** A whole number in [low, high], or a message; undefined for an empty (optional) input. */
function wholeNumber(text: string, low: number, high: number): number | string | undefined {
  if (!text.trim()) return undefined;
  const n = Number(text.trim());
  if (!Number.isInteger(n) || n < low || n > high) return `a whole number between ${low} and ${high}`;
  return n;
}

/**
 * The request the form describes, or the fields it gets wrong (named as the server names
 * them, with the same limits, so a mistake is caught before a round trip; the server checks
 * again whatever this lets through).
 */
export function trainingRequest(form: TrainingForm): { request?: SubmitTrainingRequest; errors: FieldViolation[] } {
  const errors: FieldViolation[] = [];
  const bad = (field: string, description: string) => errors.push({ field, description });

  if (!form.source.trim()) bad("source", "required: the program to train");
  if (!BACKENDS.some((b) => b.value === form.backend)) bad("backend", "PyTorch or TensorFlow");

  let dataset: SubmitTrainingRequest["dataset"] | undefined;
  const [kind, ...rest] = form.dataset.split(":");
  const value = rest.join(":");
  if (kind === "builtin" && BUILTIN_DATASETS.some((d) => d.value === value)) dataset = { builtin: value as BuiltinDataset };
  else if (kind === "dataset" && value) dataset = { dataset_id: value };
  else bad("dataset", "required: a built-in dataset or an uploaded one");

  const request: SubmitTrainingRequest = {
    source: form.source,
    backend: form.backend as TrainingBackend,
    dataset: dataset ?? { builtin: "BUILTIN_DATASET_DIGITS" },
  };
  if (form.network.trim()) request.network = form.network.trim();

  const epochs = wholeNumber(form.epochs, 1, 10_000);
  if (typeof epochs === "string") bad("epochs", epochs);
  else if (epochs !== undefined) request.epochs = epochs;
  const batch = wholeNumber(form.batch_size, 1, 65_536);
  if (typeof batch === "string") bad("batch_size", batch);
  else if (batch !== undefined) request.batch_size = batch;
  if (form.learning_rate.trim()) {
    const lr = Number(form.learning_rate.trim());
    if (!(Number.isFinite(lr) && lr > 0 && lr <= 10)) bad("learning_rate", "a number in (0, 10]");
    else request.learning_rate = lr;
  }

  const experiment = form.experiment.trim();
  if (experiment.length > 200) bad("experiment", "at most 200 characters");
  else if (experiment) request.experiment = experiment;

  const url = form.webhook_url.trim();
  const secret = form.webhook_secret;
  if (url) {
    if (!/^https?:\/\/[^\s/]+/.test(url)) bad("webhooks[0].url", "an http:// or https:// URL");
    if (secret.length < 16 || secret.length > 256) bad("webhooks[0].secret", "required: 16 to 256 characters");
    request.webhooks = [{ url, secret }];
  } else if (secret) bad("webhooks[0].url", "required with a secret");

  return errors.length ? { errors } : { request, errors };
}
