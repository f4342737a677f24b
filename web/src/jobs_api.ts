// The trainer's REST calls (TrainerService in gateway/openapi.json): training jobs, their watch
// stream, cancel, the datasets a job can train on, and the workers that run jobs.

import { call, enc, readNdjson, send } from "./api";

export type JobState =
  | "JOB_STATE_UNSPECIFIED"
  | "JOB_STATE_QUEUED"
  | "JOB_STATE_RUNNING"
  | "JOB_STATE_SUCCEEDED"
  | "JOB_STATE_FAILED"
  | "JOB_STATE_CANCELLED";

export interface WebhookDelivery {
  url: string;
  event: string;
  attempt: number;
  status_code: number;
  delivered: boolean;
  error?: string;
  time?: string;
}

/** What a training job's details carry (the runner writes them; a Struct, so all optional). */
export interface TrainingDetails {
  run_id?: string;
  experiment_id?: string;
  epoch?: number;
  epochs_done?: number;
  metrics?: Record<string, number>;
  [key: string]: unknown;
}

export interface Job {
  id: string;
  kind: string;
  state: JobState;
  create_time?: string;
  start_time?: string;
  end_time?: string;
  error?: string;
  progress?: number;
  result?: string;
  details?: TrainingDetails;
  attempts?: number;
  webhook_deliveries?: WebhookDelivery[];
  owner?: string;
}

export interface JobEvent {
  job_id: string;
  state: JobState;
  time?: string;
  type: string; // "queued", "started", "progress", "completed", "failed", "cancelled"
  message?: string;
  progress?: number;
  epoch?: number;
  step?: string; // int64
  metrics?: Record<string, number>;
  job?: Job;
}

export type TrainingBackend = "TRAINING_BACKEND_PYTORCH" | "TRAINING_BACKEND_TENSORFLOW";
export type BuiltinDataset =
  | "BUILTIN_DATASET_DIGITS"
  | "BUILTIN_DATASET_IRIS"
  | "BUILTIN_DATASET_WINE"
  | "BUILTIN_DATASET_BREAST_CANCER";

export interface Webhook {
  url: string;
  secret: string;
  events?: string[];
}

/** SubmitTrainingRequest as JSON: a program's text, and what to train it on. */
export interface SubmitTrainingRequest {
  source: string;
  network?: string;
  backend: TrainingBackend;
  dataset: { builtin: BuiltinDataset } | { dataset_id: string };
  epochs?: number;
  batch_size?: number;
  learning_rate?: number;
  experiment?: string;
  webhooks?: Webhook[];
}

export interface Dataset {
  id: string;
  name: string;
  format?: string;
  size_bytes?: string;
  owner?: string;
  create_time?: string;
}

export interface Worker {
  id: string;
  hostname: string;
  pid: number;
  queues: string[];
  last_heartbeat_time?: string;
  alive: boolean;
  in_flight_job_ids: string[];
}

export const submitTraining = (request: SubmitTrainingRequest) => call<Job>("POST", "/v1/training-jobs", request);

/** A page of the caller's training jobs, newest first. */
export async function listTrainingJobs(pageToken = ""): Promise<{ jobs: Job[]; next_page_token: string }> {
  const q = new URLSearchParams({ page_size: "50" });
  if (pageToken) q.set("page_token", pageToken);
  const r = await call<{ jobs?: Job[]; next_page_token?: string }>("GET", `/v1/training-jobs?${q}`);
  return { jobs: r.jobs ?? [], next_page_token: r.next_page_token ?? "" };
}

/** The job with its webhook deliveries (the list and the watch leave those out). */
export const getTrainingJob = (id: string) => call<Job>("GET", `/v1/training-jobs/${enc(id)}`);

/** Stops a queued job at once; a running one is asked to stop after its current step. */
export const cancelTrainingJob = (id: string) => call<Job>("POST", `/v1/training-jobs/${enc(id)}:cancel`, {});

/** WatchTrainingJob: the job as it stands first, then one event per epoch, until it ends. */
export async function watchTrainingJob(id: string, onEvent: (e: JobEvent) => void, signal: AbortSignal): Promise<void> {
  const response = await send("GET", `/v1/training-jobs/${enc(id)}:watch`, undefined, signal);
  if (response.body) await readNdjson<JobEvent>(response.body, onEvent);
}

/** The caller's uploaded datasets (the first 1000: enough for a choice in a form). */
export async function listDatasets(): Promise<Dataset[]> {
  const r = await call<{ datasets?: Dataset[] }>("GET", "/v1/datasets?page_size=1000");
  return r.datasets ?? [];
}

/** Every worker, dead ones too when asked (admins only). */
export async function listWorkers(includeDead: boolean): Promise<Worker[]> {
  const workers: Worker[] = [];
  let token = "";
  for (let page = 0; page < 20; page++) { // bounded: a fleet is not thousands of processes
    const q = new URLSearchParams({ page_size: "100" });
    if (includeDead) q.set("include_dead", "true");
    if (token) q.set("page_token", token);
    const r = await call<{ workers?: Worker[]; next_page_token?: string }>("GET", `/v1/workers?${q}`);
    workers.push(...(r.workers ?? []));
    token = r.next_page_token ?? "";
    if (!token) break;
  }
  return workers;
}
