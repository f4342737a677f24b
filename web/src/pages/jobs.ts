// The training queue: every job the caller may see, newest first, with its state and progress,
// re-read while any job is still queued or running; and, for users, the "New training" form.
//
// The queue is re-listed rather than watched: a watch per job would hold a connection each
// (and the trainer bounds the watches a caller may hold), while one listing shows them all.
// The job page follows its one job through the watch stream.

import { ApiError } from "../api";
import { clear, errorText, h, type Dispose } from "../dom";
import {
  BACKENDS, BUILTIN_DATASETS, EXAMPLE_SOURCE, epochsDone, epochsTotal, formatTime, formFieldOf, isActive, mergeJobs,
  percent, progressText, runIdOf, stateName, trainingRequest, type FormField, type TrainingForm,
} from "../jobs";
import { listDatasets, listTrainingJobs, submitTraining, type Job, type JobState } from "../jobs_api";
import { go, href } from "../router";
import { canWrite } from "../session";

const ACTIVE_REFRESH_MS = 2000; // while a job is queued or running
const IDLE_REFRESH_MS = 15_000; // otherwise: jobs submitted elsewhere (the CLI) still show up

export function jobsPage(root: HTMLElement): Dispose {
  let alive = true;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let jobs: Job[] = [];
  let token = "";
  let morePages = false; // "More" was used: a refresh must not rewind the next page's token

  const status = h("p", { class: "muted" }, "Loading…");
  const table = h("table", { "data-testid": "jobs-table", class: "runs jobs" });
  const more = h("button", { type: "button", hidden: true }, "More");

  root.append(h("h1", {}, "Training jobs"));
  if (canWrite()) root.append(newTrainingForm());
  root.append(status, table, more);

  function draw(): void {
    clear(table);
    table.append(
      h("thead", {}, h("tr", {}, ...["Job", "State", "Progress", "Created", "Run", "Owner"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ...jobs.map(jobRow)),
    );
    status.textContent = jobs.length === 0 ? "No training jobs yet." : `${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
    status.className = "muted";
  }

  async function load(next: boolean): Promise<void> {
    clearTimeout(timer);
    try {
      const page = await listTrainingJobs(next ? token : "");
      if (!alive) return;
      if (next) {
        jobs = mergeJobs(page.jobs, jobs); // older jobs: merged behind the ones shown
        morePages = true;
        token = page.next_page_token;
      } else {
        jobs = mergeJobs(jobs, page.jobs);
        if (!morePages) token = page.next_page_token;
      }
      more.hidden = !token;
      draw();
    } catch (err) {
      if (!alive) return;
      status.textContent = errorText(err);
      status.className = "error";
    }
    if (alive) timer = setTimeout(() => void load(false), jobs.some((j) => isActive(j.state)) ? ACTIVE_REFRESH_MS : IDLE_REFRESH_MS);
  }

  more.addEventListener("click", () => void load(true));
  void load(false);
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}

function jobRow(job: Job): HTMLTableRowElement {
  const bar = progressBar();
  bar.set(job.state, job.progress, epochsDone(job), epochsTotal(job));
  const runId = runIdOf(job);
  return h("tr", { "data-testid": "job-row", "data-job-id": job.id, "data-state": stateName(job.state) },
    h("td", {}, h("a", { "data-testid": "job-link", href: href({ page: "job", id: job.id }), class: "mono" }, shortId(job.id))),
    h("td", {}, stateBadge(job.state)),
    h("td", {}, bar.el),
    h("td", { title: job.create_time ?? "" }, formatTime(job.create_time)),
    h("td", {}, runId ? h("a", { "data-testid": "job-run", href: href({ page: "run", id: runId }) }, "run") : h("span", { class: "muted" }, "—")),
    h("td", {}, job.owner ?? ""),
  );
}

export const shortId = (id: string): string => (id.length > 12 ? `${id.slice(0, 8)}…` : id);

/** The job's state as a coloured word (style.css: .status.<state>). */
export function stateBadge(state: JobState | undefined, testid = "job-state"): HTMLSpanElement {
  const name = stateName(state);
  return h("span", { "data-testid": testid, class: `status ${name}` }, name.toUpperCase());
}

/**
 * A progress bar whose numbers tests can read: data-progress (0..1), data-epoch (finished
 * epochs), and the same in words beside it.
 */
export function progressBar(): { el: HTMLElement; set: (state: JobState | undefined, progress: number | undefined, epoch: number, total?: number) => void } {
  const fill = h("div", { class: "fill" });
  const track = h("div", { class: "track", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
  const text = h("span", { class: "progress-text" });
  const el = h("div", { "data-testid": "job-progress", class: "progress" }, track, text);
  return {
    el,
    set(state, progress, epoch, total = 0) {
      const pct = percent(progress);
      fill.style.width = `${pct}%`;
      fill.className = `fill ${stateName(state)}`;
      track.setAttribute("aria-valuenow", String(pct));
      el.setAttribute("data-progress", String(Math.min(1, Math.max(0, Number(progress ?? 0) || 0))));
      el.setAttribute("data-epoch", String(epoch));
      text.textContent = progressText(state, progress, epoch, total);
    },
  };
}

/** The form that queues a training (SubmitTraining); on success, the new job's page. */
function newTrainingForm(): HTMLElement {
  const errors = new Map<FormField, HTMLElement>();
  const general = h("div", { "data-testid": "form-error", class: "error" });

  function field(name: FormField, label: string, input: HTMLElement, hint = ""): HTMLElement {
    const error = h("span", { "data-testid": "field-error", "data-field": name, class: "field-error" });
    errors.set(name, error);
    input.setAttribute("name", name);
    input.setAttribute("data-testid", `train-${name.replace(/_/g, "-")}`);
    return h("label", { class: `field field-${name}` }, h("span", { class: "label" }, label), input,
      hint ? h("span", { class: "muted hint" }, hint) : null, error);
  }

  const source = h("textarea", { rows: 14, cols: 70, spellcheck: "false", class: "source" });
  source.value = EXAMPLE_SOURCE;
  const network = h("input", { size: 16, placeholder: "the only one" });
  const backend = h("select", {}, ...BACKENDS.map((b) => h("option", { value: b.value }, b.label)));
  const uploaded = h("optgroup", { label: "Uploaded" });
  const dataset = h("select", {},
    h("optgroup", { label: "Built in (scikit-learn)" },
      ...BUILTIN_DATASETS.map((d) => h("option", { value: `builtin:${d.value}` }, d.label))));
  const epochs = h("input", { type: "number", min: 1, max: 10000, step: 1, size: 6, placeholder: "program's" });
  const batch = h("input", { type: "number", min: 1, max: 65536, step: 1, size: 6, placeholder: "program's" });
  const rate = h("input", { size: 8, placeholder: "program's", inputmode: "decimal" });
  const experiment = h("input", { size: 24, placeholder: "Default", maxlength: 200 });
  const hookUrl = h("input", { size: 40, placeholder: "https://example.com/hooks/neural", type: "url" });
  const hookSecret = h("input", { size: 24, type: "password", autocomplete: "off", placeholder: "16+ characters" });
  const submit = h("button", { type: "submit", "data-testid": "submit-training", "data-write": true }, "Start training");

  // Uploads are the caller's own datasets; without any, the built-ins are the whole choice.
  listDatasets().then((list) => {
    for (const d of list) uploaded.append(h("option", { value: `dataset:${d.id}` }, `${d.name} (${d.id.slice(0, 8)})`));
    if (list.length) dataset.append(uploaded);
  }, () => {}); // not fatal: the built-in datasets remain

  const form = h("form", { "data-testid": "new-training-form", class: "train-form", "data-write": true, novalidate: true },
    field("source", "Program (Neural DSL)", source),
    h("div", { class: "train-options" },
      field("dataset", "Dataset", dataset),
      field("backend", "Backend", backend),
      field("epochs", "Epochs", epochs),
      field("batch_size", "Batch size", batch),
      field("learning_rate", "Learning rate", rate),
      field("network", "Network", network, "when the program declares several"),
      field("experiment", "Experiment", experiment)),
    h("div", { class: "train-options" },
      field("webhook_url", "Webhook URL", hookUrl, "optional: POSTs the job's events"),
      field("webhook_secret", "Webhook secret", hookSecret)),
    h("div", { class: "inline" }, submit, general));

  /** Each violation next to its input (the rest by the button), and `message` by the button
   * unless every violation found its input: the server's message repeats its first one. */
  function showErrors(list: { field: string; description: string }[], message = "", always = false): void {
    errors.forEach((e) => (e.textContent = ""));
    clear(general);
    let unplaced = 0;
    for (const v of list) {
      const target = formFieldOf(v.field);
      const where = target ? errors.get(target) : undefined;
      // a program's diagnostics name their line:column ("source:3:5"): keep it in sight
      const text = v.field.startsWith("source:") ? `${v.field.slice("source:".length)}: ${v.description}` : v.description;
      if (where) where.append(...(where.textContent ? [h("br"), text] : [text]));
      else {
        unplaced++;
        general.append(h("p", {}, v.field ? `${v.field}: ${text}` : text));
      }
    }
    if (message && (always || unplaced > 0 || list.length === 0)) general.prepend(h("p", {}, message));
    else if (list.length > 0 && unplaced === 0) general.prepend(h("p", {}, "Refused: see the marked fields."));
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const values: TrainingForm = {
      source: source.value, network: network.value, backend: backend.value, dataset: dataset.value,
      epochs: epochs.value, batch_size: batch.value, learning_rate: rate.value, experiment: experiment.value,
      webhook_url: hookUrl.value, webhook_secret: hookSecret.value,
    };
    const { request, errors: mistakes } = trainingRequest(values);
    if (!request) return showErrors(mistakes, "Please correct the marked fields.", true);
    showErrors([]);
    submit.disabled = true;
    try {
      const job = await submitTraining(request);
      go({ page: "job", id: job.id });
    } catch (err) {
      if (err instanceof ApiError) showErrors(err.violations, err.message);
      else showErrors([], errorText(err));
    } finally {
      submit.disabled = false;
    }
  });

  return h("details", { "data-testid": "new-training", class: "new-training", "data-write": true },
    h("summary", { "data-testid": "new-training-open" }, "New training"), form);
}
