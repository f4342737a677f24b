// One training job: its state and progress followed live through WatchTrainingJob (one event
// per finished epoch), its messages, its run, a Cancel button while it is queued or running,
// and its webhook deliveries.
//
// Between epochs the worker writes progress to the job without an event, and deliveries are
// only in GetTrainingJob's answer: so the page also reads the job every few seconds while it
// runs, and for a while after it ends (deliveries of the last events come late).

import { ApiError, getRun } from "../api";
import { clear, errorText, h, type Dispose } from "../dom";
import { epochsDone, epochsTotal, formatTime, isActive, runIdOf } from "../jobs";
import { cancelTrainingJob, getTrainingJob, watchTrainingJob, type Job, type JobEvent, type WebhookDelivery } from "../jobs_api";
import { href } from "../router";
import { canWrite } from "../session";
import { progressBar, shortId, stateBadge } from "./jobs";

const RETRY_MS = 1000; // before watching again; doubled while the watch keeps failing
const UNAVAILABLE = 14; // google.rpc.Code: the gateway or the trainer is away for now
const POLL_MS = 3000;
// After the end: deliveries are sent by the workers' queue, behind what it holds, and retried
// with backoff; so read on, every few seconds at first, then slower, then stop.
const SOON_AFTER_END_MS = 30_000;
const SLOW_POLL_MS = 15_000;
const POLL_AFTER_END_MS = 600_000;
const MAX_EVENTS = 500; // shown; a long training has one event per epoch
const MAX_DELIVERIES = 100; // shown, the newest

export function jobPage(root: HTMLElement, id: string): Dispose {
  const watch = new AbortController();
  let alive = true;
  let poll: ReturnType<typeof setTimeout> | undefined;
  let job: Job | null = null;
  let runAsked = "";
  let endedAt = 0; // when this page saw the job end
  let lastLogged = "";
  let cancelAsked = false; // by this page: its answer may say "asked to stop", the end comes later

  const title = h("h1", {}, "Training job ", h("span", { class: "mono" }, shortId(id)));
  const stateBox = h("span", {}, stateBadge(undefined));
  const bar = progressBar();
  const live = h("span", { class: "muted" });
  const run = h("span", { "data-testid": "job-run-box" }, h("span", { class: "muted" }, "not yet created"));
  const facts = h("table", { "data-testid": "job-facts", class: "kv" });
  const metrics = h("table", { "data-testid": "job-metrics", class: "kv" });
  const jobError = h("p", { "data-testid": "job-error", class: "error" });
  const error = h("p", { class: "error" });
  const events = h("ol", { "data-testid": "job-events", class: "job-events" });
  const deliveries = h("table", { "data-testid": "webhook-deliveries", class: "runs" });
  const cancelResult = h("span", { "data-testid": "cancel-result" });
  const cancel = canWrite()
    ? h("button", { type: "button", class: "danger", "data-testid": "cancel-job", "data-write": true, hidden: true }, "Cancel job")
    : null;

  root.append(h("a", { href: href({ page: "jobs" }) }, "← training jobs"), title,
    h("p", { class: "job-head", "data-testid": "job-head" }, "State: ", stateBox, " ", live, " ", cancel, " ", cancelResult),
    bar.el, jobError, error,
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Job"), h("p", {}, "Run: ", run), facts),
      h("section", {}, h("h2", {}, "Latest metrics"), metrics)),
    h("h2", {}, "Messages"), events,
    h("h2", {}, "Webhook deliveries"), deliveries);
  fillDeliveries(deliveries, []);

  /** The job as it stands; `withDeliveries` for GetTrainingJob's and cancel's answers. */
  function show(j: Job, withDeliveries: boolean): void {
    if (!alive) return;
    if (job) {
      // A read that crossed an event (or an epoch's event after a read within the next epoch):
      // never step back from an end, nor the bar.
      if (withDeliveries && !isActive(job.state) && isActive(j.state)) j = { ...job, webhook_deliveries: j.webhook_deliveries };
      else if (j.state === job.state && (j.progress ?? 0) < (job.progress ?? 0)) j = { ...j, progress: job.progress };
    }
    if (job && isActive(job.state) && !isActive(j.state)) endedAt = Date.now();
    if (!job && !isActive(j.state)) endedAt = Date.now();
    job = j;
    stateBox.replaceChildren(stateBadge(j.state));
    bar.set(j.state, j.progress, epochsDone(j), epochsTotal(j));
    jobError.textContent = j.error ?? "";
    if (cancel) cancel.hidden = !isActive(j.state);
    if (cancelAsked && j.state === "JOB_STATE_CANCELLED") cancelResult.textContent = "Cancelled.";
    fillFacts(facts, j);
    fillMetrics(metrics, j.details?.metrics);
    if (withDeliveries) fillDeliveries(deliveries, j.webhook_deliveries ?? []);
    const runId = runIdOf(j);
    if (runId && runId !== runAsked) showRun(runId);
  }

  /** The run's link, named as the tracker names it. */
  function showRun(runId: string): void {
    runAsked = runId;
    const link = h("a", { "data-testid": "job-run", href: href({ page: "run", id: runId }) }, runId);
    run.replaceChildren(link);
    getRun(runId).then((r) => {
      if (!alive) return;
      link.textContent = r.name || runId;
    }, () => {}); // the link works without its name
  }

  function onEvent(e: JobEvent): void {
    if (!alive) return;
    const line = `${e.type}: ${e.message ?? ""}`;
    if (line !== lastLogged) { // a watch opened again starts with the state it already told
      lastLogged = line;
      events.append(h("li", { "data-testid": "job-event", "data-type": e.type },
        h("span", { class: "muted" }, formatTime(e.time ?? new Date().toISOString())), " ",
        h("strong", {}, e.type), e.message ? ` ${e.message}` : ""));
      while (events.childElementCount > MAX_EVENTS) events.firstElementChild!.remove();
      events.scrollTop = events.scrollHeight; // the list scrolls: keep the newest in sight
    }
    if (e.job) show({ ...e.job, progress: e.progress ?? e.job.progress }, false);
  }

  /** Follows the job until it ends; a watch that stops while it runs is opened again. */
  async function follow(): Promise<void> {
    let delay = RETRY_MS;
    while (alive) {
      let started = false;
      live.textContent = "(live)";
      try {
        await watchTrainingJob(id, (e) => {
          if (!started && error.textContent?.startsWith("Live updates")) error.textContent = "";
          started = true;
          onEvent(e);
        }, watch.signal);
      } catch (err) {
        if (!alive) return;
        // Never started (an unknown job, another user's): nothing to retry.
        if (!started && !(err instanceof ApiError && err.code === UNAVAILABLE)) {
          live.textContent = "";
          error.textContent = errorText(err);
          return;
        }
        error.textContent = `Live updates interrupted (${errorText(err)}): reconnecting…`;
      }
      if (!alive || (job && !isActive(job.state))) break;
      delay = started ? RETRY_MS : Math.min(delay * 2, 30_000);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    live.textContent = "";
  }

  async function read(): Promise<void> {
    try {
      show(await getTrainingJob(id), true);
    } catch (err) {
      if (!alive) return;
      if (!job) {
        error.textContent = errorText(err);
        // an unknown job (or another user's) stays so: only a platform away for now is retried
        if (!(err instanceof ApiError && err.code === UNAVAILABLE)) return;
      }
    }
    if (!alive) return;
    const since = endedAt > 0 ? Date.now() - endedAt : 0;
    if (!job || isActive(job.state) || since < SOON_AFTER_END_MS) poll = setTimeout(() => void read(), POLL_MS);
    else if (since < POLL_AFTER_END_MS) poll = setTimeout(() => void read(), SLOW_POLL_MS);
  }

  cancel?.addEventListener("click", async () => {
    if (!confirm("Cancel this training job?")) return;
    cancel.disabled = true;
    cancelResult.className = "";
    cancelResult.textContent = "Cancelling…";
    try {
      const answer = await cancelTrainingJob(id);
      if (!alive) return;
      cancelResult.textContent = "Asked to stop: it stops after the epoch it is in.";
      cancelAsked = true;
      show(answer, true); // a queued job is cancelled at once: "Cancelled."
    } catch (err) {
      if (!alive) return;
      cancelResult.className = "error";
      cancelResult.textContent = errorText(err);
    } finally {
      cancel.disabled = false;
    }
  });

  void follow();
  void read();
  return () => {
    alive = false;
    watch.abort();
    clearTimeout(poll);
  };
}

function fillFacts(table: HTMLTableElement, j: Job): void {
  clear(table);
  const rows: [string, string][] = [
    ["id", j.id],
    ["owner", j.owner ?? ""],
    ["created", formatTime(j.create_time)],
    ["started", formatTime(j.start_time)],
    ["ended", formatTime(j.end_time)],
    ["attempts", String(j.attempts ?? 0)],
    ["result", j.result ?? ""],
  ];
  for (const [k, v] of rows) if (v) table.append(h("tr", {}, h("th", {}, k), h("td", {}, v)));
}

function fillMetrics(table: HTMLTableElement, values: Record<string, number> | undefined): void {
  clear(table);
  const keys = Object.keys(values ?? {}).sort();
  if (keys.length === 0) table.append(h("tr", {}, h("td", { class: "muted" }, "None yet.")));
  for (const k of keys) {
    const v = values![k];
    table.append(h("tr", {}, h("th", {}, k), h("td", { class: "num" }, typeof v === "number" ? v.toPrecision(4) : String(v))));
  }
}

function fillDeliveries(table: HTMLTableElement, list: WebhookDelivery[]): void {
  clear(table);
  if (list.length === 0) {
    table.append(h("tr", {}, h("td", { class: "muted" }, "None: the job has no webhooks, or none was called yet.")));
    return;
  }
  // newest first: a long training has a delivery per epoch per hook
  const shown = [...list].sort((a, b) => (Date.parse(b.time ?? "") || 0) - (Date.parse(a.time ?? "") || 0)).slice(0, MAX_DELIVERIES);
  table.append(h("thead", {}, h("tr", {}, ...["Event", "URL", "Attempt", "Status", "Delivered", "Error", "Time"].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...shown.map((d) =>
      h("tr", { "data-testid": "webhook-delivery", "data-delivered": String(Boolean(d.delivered)) },
        h("td", {}, d.event),
        h("td", { class: "mono" }, d.url),
        h("td", { class: "num" }, String(d.attempt ?? "")),
        h("td", { class: "num" }, d.status_code ? String(d.status_code) : "—"),
        h("td", {}, d.delivered ? "yes" : "no"),
        h("td", { class: "error" }, d.error ?? ""),
        h("td", {}, formatTime(d.time)))),
      list.length > shown.length
        ? h("tr", {}, h("td", { class: "muted", colspan: 7 }, `and ${list.length - shown.length} older deliveries`))
        : null));
}
