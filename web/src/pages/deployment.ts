// One deployment: its state and replicas, its versions with their traffic split (a bar) and the
// run or model each serves, and for writers a predict box, scaling, canary rollouts (promote,
// roll back) and deletion. Predict needs the user role (deployer.proto), so a viewer gets none
// of these controls. No watch exists for deployments: the page reads it again every couple of
// seconds while it is still changing on its own, and after each change made here.

import {
  compactJson, exampleInput, formatScore, hasCanary, outputRows, parsePredictInput, replicasText, settled,
  shortTime, sourceFrom, stateName, topClasses, trafficSegments,
} from "../deployments";
import {
  deleteDeployment, getDeployment, inputShape, predict, promoteDeployment, rollbackDeployment,
  rolloutDeployment, scaleDeployment, type Deployment, type ModelSource, type PredictResponse,
} from "../deployments_api";
import { clear, errorText, h, type Dispose } from "../dom";
import { go, href } from "../router";
import { canWrite } from "../session";
import { errorWithFields, modelCell } from "./deployments";

const POLL_MS = 2000;

export function deploymentPage(root: HTMLElement, id: string): Dispose {
  let alive = true;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let current: Deployment | null = null;
  const writer = canWrite();

  const title = h("h1", {}, "Deployment");
  const error = h("p", { class: "error", "data-testid": "deployment-error" });
  const summary = h("table", { class: "kv", "data-testid": "deployment-summary" });
  const bar = h("div", { class: "traffic-bar", "data-testid": "traffic-bar" });
  const legend = h("p", { class: "muted", "data-testid": "traffic-legend" });
  const versions = h("table", { class: "runs", "data-testid": "versions-table" });
  const actions = h("div", { class: "deployment-actions" });
  const predictor = writer ? predictBox(id) : null;

  root.append(h("a", { href: href({ page: "deployments" }) }, "← deployments"), title, error,
    summary,
    h("h2", {}, "Traffic"), bar, legend,
    h("h2", {}, "Versions"), versions,
    actions,
    h("h2", {}, "Predict"),
    predictor ? predictor.el : h("p", { class: "muted", "data-testid": "predict-needs-user" },
      "Predictions need a user's key: this one may only read."));

  // Each read or change takes a number: an answer that a newer one overtook is dropped, so
  // only one chain of polls runs.
  let latest = 0;

  async function load(): Promise<void> {
    clearTimeout(timer);
    const mine = ++latest;
    try {
      const d = await getDeployment(id);
      if (!alive || mine !== latest) return;
      const first = current === null;
      current = d;
      error.textContent = "";
      show(d);
      if (first && predictor) predictor.prefill(servingSource(d));
      if (!settled(d)) timer = setTimeout(() => void load(), POLL_MS);
    } catch (err) {
      if (!alive || mine !== latest) return;
      error.textContent = errorText(err);
      if (!current) predictor?.prefill({}); // no model to take a shape from
      // A blip while following a change: try again; an unknown deployment: stop.
      if (current && !settled(current)) timer = setTimeout(() => void load(), POLL_MS * 2);
    }
  }

  function show(d: Deployment): void {
    title.textContent = d.name || d.id;
    const state = stateName(d.state);
    clear(summary);
    const row = (label: string, ...value: (Node | string)[]) => summary.append(h("tr", {}, h("th", {}, label), h("td", {}, ...value)));
    row("State", h("span", { "data-testid": "deployment-state", class: `status ${state.toLowerCase()}` }, state));
    if (d.error) row("Error", h("span", { class: "error" }, d.error));
    row("Replicas", h("span", { "data-testid": "deployment-replicas" }, replicasText(d)), h("span", { class: "muted" }, " ready/desired"));
    row("Serving", d.model_version || "—");
    row("Model", modelCell(d));
    if (d.endpoint) row("Endpoint", h("code", {}, d.endpoint));
    row("Owner", d.owner ?? "");
    row("Created", shortTime(d.create_time));

    clear(bar);
    const segments = trafficSegments(d.versions);
    for (const s of segments) {
      bar.append(h("div", {
        class: `segment ${s.state.toLowerCase()}`, style: `width: ${s.percent}%`, title: `${s.version}: ${s.percent}%`,
        "data-testid": "traffic-segment", "data-version": s.version, "data-percent": s.percent,
      }, `${s.version} ${s.percent}%`));
    }
    if (!segments.length) bar.append(h("div", { class: "segment none" }, "no traffic"));
    legend.textContent = segments.length > 1 ? "A canary is out: promote it or roll it back." : "";

    clear(versions);
    versions.append(
      h("thead", {}, h("tr", {}, ...["version", "state", "traffic", "ready replicas", "model", "created", "rollout job", ""]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, ...(d.versions ?? []).map((v) => {
        const vs = stateName(v.state);
        return h("tr", { "data-testid": "version-row", "data-version": v.id, "data-state": vs },
          h("td", {}, v.id),
          h("td", {}, h("span", { class: `status ${vs.toLowerCase()}` }, vs)),
          h("td", { class: "num", "data-testid": "version-traffic" }, `${v.traffic_percent ?? 0}%`),
          h("td", { class: "num", "data-testid": "version-ready" }, String(v.ready_replicas ?? 0)),
          h("td", {}, modelCell(v)),
          h("td", { class: "muted" }, shortTime(v.create_time)),
          h("td", { class: "muted" }, v.rollout_job_id ? v.rollout_job_id.slice(0, 8) : ""),
          h("td", { class: "error" }, v.error ?? ""));
      })));

    if (writer) showActions(d);
  }

  // Drawn once, and the rollout part again only when a canary comes or goes: a poll must not
  // wipe what someone is typing.
  let scale: HTMLInputElement | null = null;
  let canaryShown: boolean | null = null;
  const rollout = h("div", {});
  function showActions(d: Deployment): void {
    if (!scale) {
      const form = scaleForm(d);
      scale = form.querySelector("input");
      actions.append(h("h2", {}, "Manage"), form, rollout, deleteButton());
    } else if (document.activeElement !== scale) scale.value = String(d.replicas ?? 1);
    if (canaryShown !== hasCanary(d)) {
      canaryShown = hasCanary(d);
      clear(rollout);
      rollout.append(canaryShown ? canaryButtons() : rolloutForm());
    }
  }

  /** A change made here: show the answer at once, then follow it until it settles. */
  async function change(status: HTMLElement, action: () => Promise<Deployment>): Promise<void> {
    clear(status);
    status.className = "muted";
    status.textContent = "…";
    clearTimeout(timer);
    const mine = ++latest;
    try {
      const d = await action();
      if (!alive) return;
      status.textContent = "";
      if (mine !== latest) return; // a newer read or change shows the deployment
      current = d;
      show(d);
      timer = setTimeout(() => void load(), POLL_MS / 2);
    } catch (err) {
      if (!alive) return;
      clear(status);
      status.className = "error";
      status.append(errorWithFields(err));
      if (mine === latest) void load(); // polls stopped for the change: read it as it stands
    }
  }

  function scaleForm(d: Deployment): HTMLElement {
    const replicas = h("input", { type: "number", min: 0, max: 100, value: d.replicas ?? 1, "data-testid": "scale-replicas", style: "width: 5em" });
    const status = h("span", {});
    const form = h("form", { class: "inline", "data-write": true },
      "Replicas", replicas,
      h("button", { type: "submit", "data-testid": "scale", "data-write": true }, "Scale"), status);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      void change(status, () => scaleDeployment(id, Number(replicas.value)));
    });
    return form;
  }

  function rolloutForm(): HTMLElement {
    const run = h("input", { placeholder: "run id", size: 34, "data-testid": "rollout-run" });
    const path = h("input", { value: "model.onnx", size: 14, "data-testid": "rollout-path" });
    const model = h("input", { placeholder: "or a registry model id", size: 34, "data-testid": "rollout-model" });
    const percent = h("input", { type: "number", min: 1, max: 100, value: 10, style: "width: 5em", "data-testid": "rollout-percent" });
    const status = h("span", {});
    const form = h("form", { class: "inline wrap", "data-write": true },
      "Canary", run, path, model, percent, "% of traffic",
      h("button", { type: "submit", "data-testid": "rollout", "data-write": true }, "Roll out"), status);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const source = sourceFrom(run.value, path.value, model.value);
      if (typeof source === "string") {
        status.className = "error";
        status.textContent = source;
        return;
      }
      void change(status, () => rolloutDeployment(id, source, Number(percent.value)));
    });
    return form;
  }

  function canaryButtons(): HTMLElement {
    const status = h("span", {});
    return h("div", { class: "inline" },
      h("button", { type: "button", "data-testid": "promote", "data-write": true,
        onclick: () => void change(status, () => promoteDeployment(id)) }, "Promote canary"),
      h("button", { type: "button", "data-testid": "rollback", "data-write": true,
        onclick: () => void change(status, () => rollbackDeployment(id)) }, "Roll back canary"),
      status);
  }

  function deleteButton(): HTMLElement {
    const status = h("span", {});
    return h("div", { class: "inline" }, h("button", {
      type: "button", class: "danger", "data-testid": "delete-deployment", "data-write": true,
      onclick: async () => {
        if (!confirm("Delete this deployment? Its replicas stop.")) return;
        try {
          await deleteDeployment(id);
          go({ page: "deployments" });
        } catch (err) {
          clear(status);
          status.className = "error";
          status.append(errorWithFields(err));
        }
      },
    }, "Delete deployment"), status);
  }

  void load();
  return () => {
    alive = false;
    clearTimeout(timer);
    predictor?.dispose();
  };
}

/** The version that serves most of the traffic's model (what a prediction mostly reaches). */
function servingSource(d: Deployment): ModelSource {
  const serving = (d.versions ?? []).find((v) => v.id === d.model_version);
  return serving?.run_artifact || serving?.model_id ? serving : d;
}

/**
 * The predict box: JSON in, the answer out. Bad JSON is caught here, before any call; the
 * server's refusals show its message and the fields it named. Its example input takes the
 * model's input shape when it can be found (deployments_api.inputShape).
 */
function predictBox(id: string): { el: HTMLElement; prefill: (source: ModelSource) => void; dispose: () => void } {
  let alive = true;
  let edited = false;
  const input = h("textarea", {
    "data-testid": "predict-input", rows: 6, cols: 80, spellcheck: "false", class: "json",
    "aria-label": "The prediction's input as JSON",
  });
  input.value = exampleInput(null);
  input.addEventListener("input", () => (edited = true));
  const shapeNote = h("p", { class: "muted", "data-testid": "predict-shape" }, "Looking up the model's input shape…");
  const button = h("button", { type: "submit", "data-testid": "predict", "data-write": true }, "Predict");
  const error = h("div", { class: "error", "data-testid": "predict-error", hidden: true });
  const output = h("div", { "data-testid": "predict-output", hidden: true });
  const form = h("form", { class: "predict", "data-write": true }, shapeNote, input,
    h("div", { class: "inline" }, button, h("span", { class: "muted" },
      "{\"instances\": [row, …]} or {\"inputs\": [tensor, …]}; a bare array is taken as the rows")),
    error, output);

  function fail(content: Node | string): void {
    clear(error);
    error.append(content);
    error.hidden = false;
    output.hidden = true;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parsed = parsePredictInput(input.value);
    if (!parsed.ok) return fail(parsed.message);
    error.hidden = true;
    button.disabled = true;
    form.setAttribute("aria-busy", "true");
    try {
      const answer = await predict(id, parsed.body);
      if (alive) showAnswer(answer);
    } catch (err) {
      if (alive) fail(errorWithFields(err));
    } finally {
      button.disabled = false;
      form.removeAttribute("aria-busy");
    }
  });

  function showAnswer(answer: PredictResponse): void {
    clear(output);
    output.hidden = false;
    output.append(h("p", {}, "Answered by ", h("strong", { "data-testid": "predict-version" }, answer.model_version || "?")));
    const first = answer.outputs?.[0];
    const ranked = first ? topClasses(first) : null;
    if (ranked) {
      const probabilities = ranked.every((r) => r.probabilities);
      output.append(h("table", { class: "runs", "data-testid": "top-classes" },
        h("thead", {}, h("tr", {}, h("th", {}, "row"), h("th", {}, "top class"),
          h("th", {}, probabilities ? "probability" : "score"), h("th", {}, "next"))),
        h("tbody", {}, ...ranked.map((r) => {
          const [best, ...rest] = r.top;
          return h("tr", { "data-testid": "top-class", "data-row": r.row, "data-class": best?.index ?? "" },
            h("td", { class: "num" }, String(r.row)),
            h("td", { class: "num" }, h("strong", {}, String(best?.index ?? "—"))),
            h("td", { class: "num" }, best ? formatScore(best.value, r.probabilities) : ""),
            h("td", { class: "muted" }, rest.map((x) => `${x.index}: ${formatScore(x.value, r.probabilities)}`).join(", ")));
        }))));
    }
    for (const t of (answer.outputs ?? []).slice(ranked ? 1 : 0)) {
      output.append(h("p", { class: "muted" }, `output ${t.name || ""} shape [${(t.shape ?? []).join(", ")}] ${t.dtype ?? ""}`));
    }
    output.append(h("pre", { class: "json", "data-testid": "predict-raw" }, compactJson(outputRows(answer))));
  }

  async function prefill(source: ModelSource): Promise<void> {
    try {
      const shape = await inputShape(source);
      if (!alive) return;
      shapeNote.textContent = shape
        ? `The model takes input of shape [${shape.join(", ")}] (-1: any size; the first is the batch).`
        : "The model's input shape is not known here: write its rows.";
      if (shape) shapeNote.setAttribute("data-shape", JSON.stringify(shape));
      if (!edited) input.value = exampleInput(shape);
    } catch (err) {
      if (alive) shapeNote.textContent = `The model's input shape is not known here (${errorText(err)}): write its rows.`;
    }
  }

  return { el: form, prefill: (s) => void prefill(s), dispose: () => (alive = false) };
}
