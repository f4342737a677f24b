// One run: status, params, tags, artifacts, and a chart per metric that follows the run live.
//
// The watch starts before the histories are read: WatchRun sends every point logged after its
// first event, so reading the history after that event leaves no gap between the two, and the
// Series merges the overlap (same steps) away.

import {
  ApiError, artifactUrl, downloadArtifact, getRun, listArtifacts, metricHistory, setTags, watchRun,
  type Artifact, type Run, type RunEvent,
} from "../api";
import { MetricChart } from "../chart";
import { clear, errorText, h, type Dispose } from "../dom";
import { href } from "../router";
import { canWrite } from "../session";

const MAX_POINTS = 1000; // per chart, from the server's downsampled history
const RETRY_MS = 1000; // before watching again; doubled while the watch keeps failing
const UNAVAILABLE = 14; // google.rpc.Code: the gateway or the tracker is away for now

export function runPage(root: HTMLElement, id: string): Dispose {
  const watch = new AbortController();
  const charts = new Map<string, MetricChart>();
  let alive = true;
  let lastStatus: Run["status"] | undefined;
  let artifactsShown = false;

  const title = h("h1", {}, "Run");
  const back = h("a", { href: "#/experiments" }, "← experiments");
  const status = h("span", { "data-testid": "run-status", class: "status" }, "…");
  const live = h("span", { class: "muted" });
  const params = h("table", { "data-testid": "params", class: "kv" });
  const tags = h("table", { "data-testid": "tags", class: "kv" });
  const chartBox = h("div", { class: "charts" });
  const artifacts = h("ul", { class: "artifacts" });
  const error = h("p", { class: "error" });

  root.append(back, title, h("p", {}, "Status: ", status, " ", live), error,
    h("div", { class: "columns" },
      h("section", {}, h("h2", {}, "Params"), params),
      h("section", {}, h("h2", {}, "Tags"), tags, canWrite() ? tagForm(id, () => refresh()) : null)),
    h("h2", {}, "Metrics"), chartBox,
    h("h2", {}, "Artifacts"), artifacts);

  function showRun(run: Run): void {
    title.textContent = run.name || run.id;
    back.setAttribute("href", href({ page: "experiment", id: run.experiment_id }));
    back.textContent = "← runs of the experiment";
    lastStatus = run.status;
    status.textContent = (run.status ?? "").replace("RUN_STATUS_", "");
    status.className = `status ${status.textContent.toLowerCase()}`;
    fillKv(params, run.params);
    fillKv(tags, run.tags);
  }

  function chart(key: string): MetricChart {
    let c = charts.get(key);
    if (!c) {
      c = new MetricChart(key);
      charts.set(key, c);
      // Keep the charts in key order whichever arrives first.
      const after = [...charts.keys()].sort().find((k) => k > key);
      chartBox.insertBefore(c.el, after ? charts.get(after)!.el : null);
    }
    return c;
  }

  function onEvent(event: RunEvent): void {
    if (!alive) return;
    if (event.run) showRun(event.run);
    for (const m of event.metrics ?? []) chart(m.key).add([m.step], [m.value]);
  }

  async function loadHistories(run: Run): Promise<void> {
    const keys = [...new Set((run.latest_metrics ?? []).map((m) => m.key))];
    await Promise.all(keys.map(async (key) => {
      const c = chart(key);
      const history = await metricHistory(id, key, MAX_POINTS);
      if (alive) c.add(history.steps, history.values);
    }));
  }

  async function refresh(): Promise<void> {
    showRun(await getRun(id));
  }

  /** After the watch's first event (the run as it stands): the histories, the artifacts. */
  async function catchUp(run: Run): Promise<void> {
    try {
      await Promise.all([loadHistories(run), artifactsShown ? null : loadArtifacts()]);
      artifactsShown = true;
    } catch (err) {
      if (alive) error.textContent = errorText(err);
    }
  }

  /**
   * Follows the run until it ends. A watch that ends while the run still runs (it fell behind,
   * RESOURCE_EXHAUSTED, or the gateway went away) is opened again, and the histories read
   * again for what it missed; the Series drops the points seen twice.
   */
  async function follow(): Promise<void> {
    let delay = RETRY_MS;
    while (alive) {
      let caughtUp: Promise<void> | null = null;
      live.textContent = "(live)";
      try {
        await watchRun(id, (e) => {
          onEvent(e);
          if (!caughtUp && e.run) {
            if (error.textContent?.startsWith("Live updates")) error.textContent = ""; // back
            caughtUp = catchUp(e.run);
          }
        }, watch.signal);
      } catch (err) {
        if (!alive) return;
        // Never started (an unknown run, another user's): nothing to retry.
        if (!caughtUp && !(err instanceof ApiError && err.code === UNAVAILABLE)) {
          live.textContent = "";
          error.textContent = errorText(err);
          return;
        }
        error.textContent = `Live updates interrupted (${errorText(err)}): reconnecting…`;
      }
      await caughtUp;
      // (No status yet: the watch never reached the tracker, which may be back soon.)
      if (!alive || (lastStatus !== undefined && lastStatus !== "RUN_STATUS_RUNNING")) break;
      delay = caughtUp ? RETRY_MS : Math.min(delay * 2, 30_000);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
    live.textContent = "";
  }

  async function loadArtifacts(dir = "", depth = 0): Promise<void> {
    const items = await listArtifacts(id, dir);
    if (!dir) clear(artifacts);
    for (const a of items) {
      // Directories are listed one level at a time; a few levels cover what runs write.
      if (a.is_dir) {
        if (depth < 3) await loadArtifacts(a.path, depth + 1);
      } else artifacts.append(h("li", {}, artifactLink(id, a), h("span", { class: "muted" }, ` ${a.size_bytes} bytes`)));
    }
    if (!dir && artifacts.childElementCount === 0) artifacts.append(h("li", { class: "muted" }, "None."));
  }

  void follow();
  return () => {
    alive = false;
    watch.abort();
    charts.forEach((c) => c.destroy());
  };
}

function fillKv(table: HTMLTableElement, values: Record<string, string> | undefined): void {
  clear(table);
  const keys = Object.keys(values ?? {}).sort();
  if (keys.length === 0) table.append(h("tr", {}, h("td", { class: "muted" }, "None.")));
  for (const k of keys) table.append(h("tr", {}, h("th", {}, k), h("td", {}, values![k])));
}

/**
 * A download link. Its href is the REST route (to copy for curl), but a plain link cannot carry
 * the bearer key: the first click fetches the bytes with it, then saves them from a blob URL.
 */
function artifactLink(runId: string, a: Artifact): HTMLAnchorElement {
  const name = a.path.split("/").pop() ?? a.path;
  const link = h("a", { "data-testid": "artifact", href: artifactUrl(runId, a.path), download: name }, a.path);
  let fetched = false;
  link.addEventListener("click", async (event) => {
    if (fetched) return; // the blob URL: the browser saves it
    event.preventDefault();
    try {
      link.href = URL.createObjectURL(await downloadArtifact(runId, a.path));
      fetched = true;
      link.click();
    } catch (err) {
      link.title = errorText(err);
      link.classList.add("error");
    }
  });
  return link;
}

function tagForm(runId: string, done: () => Promise<void>): HTMLElement {
  const key = h("input", { placeholder: "key", required: true, size: 12 });
  const value = h("input", { placeholder: "value", size: 16 });
  const error = h("span", { class: "error" });
  const form = h("form", { class: "inline", "data-write": true }, key, value,
    h("button", { type: "submit", "data-testid": "set-tag", "data-write": true }, "Set tag"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    try {
      await setTags(runId, { [key.value.trim()]: value.value });
      key.value = value.value = "";
      await done();
    } catch (err) {
      error.textContent = errorText(err);
    }
  });
  return form;
}
