// Every deployment the caller sees: its state, replicas, versions and traffic split, and (for
// writers) a form that serves a trained run's model or a registry model. There is no watch of
// deployments: the list is read again every few seconds while one of them is still changing
// on its own (replicas starting, a version coming up, a deletion).

import { ApiError } from "../api";
import { replicasText, settled, shortTime, sourceFrom, stateName, trafficText } from "../deployments";
import {
  createDeployment, listDeployments, type Deployment, type DeploymentVersion,
} from "../deployments_api";
import { clear, errorText, h, type Dispose } from "../dom";
import { go, href } from "../router";
import { canWrite } from "../session";

const POLL_MS = 3000;

export function deploymentsPage(root: HTMLElement): Dispose {
  let alive = true;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const status = h("p", { class: "muted" }, "Loading…");
  const table = h("table", { "data-testid": "deployments-table", class: "runs deployments" });

  async function load(): Promise<void> {
    clearTimeout(timer);
    try {
      const found = await listDeployments();
      if (!alive) return;
      draw(found);
      status.textContent = found.length === 0 ? "No deployments yet." : `${found.length} deployment${found.length === 1 ? "" : "s"}`;
      status.className = "muted";
      if (!found.every(settled)) timer = setTimeout(() => void load(), POLL_MS);
    } catch (err) {
      if (!alive) return;
      status.textContent = errorText(err);
      status.className = "error";
    }
  }

  function draw(found: Deployment[]): void {
    clear(table);
    table.append(
      h("thead", {}, h("tr", {}, ...["name", "state", "replicas", "versions", "traffic", "model", "created"]
        .map((c) => h("th", {}, c)))),
      h("tbody", {}, ...found.map((d) => {
        const state = stateName(d.state);
        return h("tr", { "data-testid": "deployment-row", "data-deployment-id": d.id, "data-state": state },
          h("td", {}, h("a", { "data-testid": "deployment", href: href({ page: "deployment", id: d.id }) }, d.name)),
          h("td", {}, h("span", { class: `status ${state.toLowerCase()}`, title: d.error || null }, state)),
          h("td", { "data-testid": "deployment-replicas", class: "num" }, replicasText(d)),
          h("td", { "data-testid": "deployment-versions" }, versionsText(d.versions)),
          h("td", { "data-testid": "deployment-traffic" }, trafficText(d.versions)),
          h("td", {}, modelCell(d)),
          h("td", { class: "muted" }, shortTime(d.create_time)));
      })));
  }

  root.append(h("h1", {}, "Deployments"));
  if (canWrite()) root.append(createForm());
  root.append(status, table);
  void load();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}

/** "v2 (pending), v1": the versions that are not retired, newest first as the server lists. */
function versionsText(versions: DeploymentVersion[] | undefined): string {
  const live = (versions ?? []).filter((v) => v.state !== "DEPLOYMENT_VERSION_STATE_RETIRED");
  if (!live.length) return "—";
  return live.map((v) => v.state === "DEPLOYMENT_VERSION_STATE_SERVING" ? v.id : `${v.id} (${stateName(v.state).toLowerCase()})`)
    .join(", ");
}

/** The run the serving model was trained in (a link), or the registry model's id. */
export function modelCell(source: { run_artifact?: { run_id: string; path: string }; model_id?: string }): Node | string {
  if (source.run_artifact?.run_id) {
    const { run_id, path } = source.run_artifact;
    return h("span", {}, "run ",
      h("a", { "data-testid": "model-run", href: href({ page: "run", id: run_id }) }, run_id.slice(0, 8)),
      h("span", { class: "muted" }, ` ${path}`));
  }
  return source.model_id ? `model ${source.model_id.slice(0, 8)}` : "—";
}

/** A failed call as the server said it: its message, and each field it named. */
export function errorWithFields(err: unknown): Node {
  const out = h("span", {}, errorText(err));
  if (err instanceof ApiError) {
    for (const v of err.violations) {
      out.append(h("span", { "data-testid": "violation", "data-field": v.field, class: "violation" },
        h("code", {}, v.field), `: ${v.description}`));
    }
  }
  return out;
}

function createForm(): HTMLElement {
  const name = h("input", {
    "data-testid": "deployment-name", placeholder: "name (e.g. digits-classifier)", required: true,
    // (a pattern is compiled with the v flag, where a class's "-" must be escaped)
    pattern: "[a-z0-9]([a-z0-9\\-]*[a-z0-9])?", title: "lower-case letters, digits and '-' (a DNS-1123 label)",
  });
  const run = h("input", { "data-testid": "deployment-run", placeholder: "run id", size: 34 });
  const path = h("input", { "data-testid": "deployment-path", value: "model.onnx", size: 14, title: "the run's ONNX artifact" });
  const model = h("input", { "data-testid": "deployment-model", placeholder: "or a registry model id", size: 34 });
  const error = h("div", { "data-testid": "create-deployment-error", class: "error" });
  const form = h("form", { class: "inline wrap", "data-write": true, "data-testid": "create-deployment-form" },
    name, run, path, model,
    h("button", { type: "submit", "data-testid": "create-deployment", "data-write": true }, "Deploy"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(error);
    const source = sourceFrom(run.value, path.value, model.value);
    if (typeof source === "string") {
      error.textContent = source;
      return;
    }
    try {
      const created = await createDeployment(name.value.trim(), source);
      go({ page: "deployment", id: created.id });
    } catch (err) {
      error.append(errorWithFields(err));
    }
  });
  return form;
}
