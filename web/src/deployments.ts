// What the deployments pages make of the deployer's answers without the DOM: the predict box's
// JSON as a PredictRequest, an example input of the model's shape, outputs as top classes, the
// traffic split as a bar's segments. Kept free of the DOM so vitest checks it (deployments.test.ts).

import { parse, type ParseError } from "jsonc-parser";
import type {
  Deployment, DeploymentVersion, ModelSource, PredictBody, PredictResponse, Tensor,
} from "./deployments_api";

// ---- the predict box ---------------------------------------------------------------------------

export type ParsedInput = { ok: true; body: PredictBody } | { ok: false; message: string };

/**
 * The predict box's text as a PredictRequest body, or why not, before any call: the JSON must
 * parse, and be either the request's body ({"instances": [...]} or {"inputs": [...]}) or bare
 * rows (an array, sent as `instances`).
 */
export function parsePredictInput(text: string): ParsedInput {
  if (!text.trim()) return { ok: false, message: "Enter the input as JSON, e.g. {\"instances\": [[1, 2, 3]]}." };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { ok: false, message: `Not valid JSON: ${(err as Error).message}${where(text, err as Error)}` };
  }
  if (Array.isArray(value)) return { ok: true, body: { instances: value } };
  if (value === null || typeof value !== "object") {
    return { ok: false, message: "Expected an object with \"instances\" (rows) or \"inputs\" (tensors), or an array of rows." };
  }
  const keys = Object.keys(value);
  const unknown = keys.filter((k) => k !== "instances" && k !== "inputs");
  if (unknown.length) {
    return { ok: false, message: `Unknown field ${unknown.map((k) => `"${k}"`).join(", ")}: give "instances" or "inputs".` };
  }
  const body = value as PredictBody;
  if (keys.length !== 1) return { ok: false, message: "Give exactly one of \"instances\" and \"inputs\"." };
  const list = body.instances ?? body.inputs;
  if (!Array.isArray(list)) return { ok: false, message: `"${keys[0]}" must be an array.` };
  return { ok: true, body };
}

/** " (line 2, column 5)": where the JSON breaks, which V8's messages do not always say. */
function where(text: string, err: Error): string {
  if (/line \d+/i.test(err.message)) return "";
  const at = jsonErrorOffset(text);
  if (at === null) return "";
  const before = text.slice(0, at).split("\n");
  return ` (line ${before.length}, column ${before[before.length - 1].length + 1})`;
}

/** The offset of the token where `text` stops being JSON (its length when it ends too soon),
 * or null when it is JSON. jsonc-parser reads it, with its JSONC extensions turned off. */
export function jsonErrorOffset(text: string): number | null {
  const errors: ParseError[] = [];
  parse(text, errors, { disallowComments: true, allowTrailingComma: false, allowEmptyContent: false });
  return errors.length ? Math.min(...errors.map((e) => e.offset)) : null;
}

/** An input of `shape` (batch first) for the predict box: one row of zeros; unknown dims 1. */
export function exampleInput(shape: number[] | null): string {
  if (!shape || shape.length === 0) return `{"instances": [\n  []\n]}`;
  const dims = shape.slice(1).map((d) => (d > 0 ? d : 1));
  const zeros = (i: number): unknown => (i === dims.length ? 0 : Array.from({ length: dims[i] }, () => zeros(i + 1)));
  return `{"instances": [\n  ${compactJson(zeros(0))}\n]}`;
}

/** JSON with every array of numbers on one line: a 64-value row stays one line, not 64. */
export function compactJson(value: unknown, indent = ""): string {
  if (Array.isArray(value)) {
    if (value.every((v) => !Array.isArray(v) && (v === null || typeof v !== "object"))) return JSON.stringify(value);
    const inner = indent + "  ";
    return `[\n${value.map((v) => inner + compactJson(v, inner)).join(",\n")}\n${indent}]`;
  }
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value);
    if (!entries.length) return "{}";
    const inner = indent + "  ";
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${compactJson(v, inner)}`).join(",\n")}\n${indent}}`;
  }
  return JSON.stringify(value);
}

// ---- outputs -----------------------------------------------------------------------------------

export interface Ranked {
  index: number;
  value: number;
}

export interface RowSummary {
  row: number;
  /** Highest first, at most `k` of them. */
  top: Ranked[];
  /** The row sums to 1 with every value in [0, 1]: a softmax's class probabilities. */
  probabilities: boolean;
}

/** A tensor's values as numbers (floats or int64 strings), NaN for what is not a number. */
export function tensorValues(t: Tensor): number[] {
  const raw = t.float_data?.length ? t.float_data : t.int64_data ?? [];
  return raw.map((v) => (typeof v === "number" ? v : Number(v)));
}

/**
 * A classifier's answer, per row: the top `k` classes by score. Only for a batch of vectors
 * (shape [rows, classes], classes >= 2); null for any other output.
 */
export function topClasses(t: Tensor, k = 3): RowSummary[] | null {
  const shape = (t.shape ?? []).map(Number);
  if (shape.length !== 2 || shape[1] < 2) return null;
  const [rows, classes] = shape;
  const values = tensorValues(t);
  if (values.length !== rows * classes) return null;
  const out: RowSummary[] = [];
  for (let r = 0; r < rows; r++) {
    const row = values.slice(r * classes, (r + 1) * classes);
    const sum = row.reduce((a, b) => a + b, 0);
    const probabilities = row.every((v) => v >= 0 && v <= 1) && Math.abs(sum - 1) < 1e-3;
    const top = row.map((value, index) => ({ index, value }))
      .filter((x) => !Number.isNaN(x.value))
      .sort((a, b) => b.value - a.value || a.index - b.index)
      .slice(0, k);
    out.push({ row: r, top, probabilities });
  }
  return out;
}

/** A score for people: probabilities as percentages, other values to 4 significant digits. */
export function formatScore(value: number, probability: boolean): string {
  if (probability) return `${(value * 100).toFixed(value >= 0.9995 || value < 0.0005 ? 0 : 1)}%`;
  return Number.isInteger(value) ? String(value) : value.toPrecision(4);
}

/** The answer's rows as the box shows them: `predictions` when sent (instances), else each
 * output's values reshaped from its flat data. */
export function outputRows(answer: PredictResponse): unknown {
  if (answer.predictions) return answer.predictions;
  const outputs = answer.outputs ?? [];
  const shaped = outputs.map((t) => reshape(tensorValues(t), (t.shape ?? []).map(Number)));
  return outputs.length === 1 ? shaped[0] : Object.fromEntries(outputs.map((t, i) => [t.name || String(i), shaped[i]]));
}

export function reshape(values: number[], shape: number[]): unknown {
  if (shape.length === 0) return values[0];
  if (shape.length === 1) return values.slice(0, shape[0]);
  const [first, ...rest] = shape;
  const size = rest.reduce((a, b) => a * b, 1);
  return Array.from({ length: first }, (_, i) => reshape(values.slice(i * size, (i + 1) * size), rest));
}

// ---- state, replicas, traffic -------------------------------------------------------------------

export const stateName = (state: string | undefined) =>
  (state ?? "").replace(/^DEPLOYMENT_(VERSION_)?STATE_/, "") || "UNSPECIFIED";

/** "1/2" (ready of desired), with the bounds of an autoscaled deployment. */
export function replicasText(d: Deployment): string {
  const ready = d.ready_replicas ?? 0;
  if ((d.max_replicas ?? 0) > 0) return `${ready}/${d.replicas ?? 0} (autoscaled ${d.min_replicas ?? 0}–${d.max_replicas})`;
  return `${ready}/${d.replicas ?? 1}`;
}

/** Whether the deployment will change on its own (replicas starting, a version coming up or
 * going): the pages poll while it is not settled. */
export function settled(d: Deployment): boolean {
  if (d.state === "DEPLOYMENT_STATE_PENDING" || d.state === "DEPLOYMENT_STATE_DELETING") return false;
  // a version starting, or one left without traffic that drains until the controller retires it
  const changing = (v: DeploymentVersion) => v.state === "DEPLOYMENT_VERSION_STATE_PENDING" ||
    (v.state === "DEPLOYMENT_VERSION_STATE_SERVING" && !(v.traffic_percent ?? 0));
  if ((d.versions ?? []).some(changing)) return false;
  return d.state !== "DEPLOYMENT_STATE_READY" || (d.ready_replicas ?? 0) >= (d.replicas ?? 1);
}

export interface Segment {
  version: string;
  percent: number;
  state: string;
}

/** The versions that take traffic, oldest first (the serving one, then its canary), for the bar. */
export function trafficSegments(versions: DeploymentVersion[] | undefined): Segment[] {
  return (versions ?? [])
    .filter((v) => (v.traffic_percent ?? 0) > 0)
    .map((v) => ({ version: v.id, percent: v.traffic_percent ?? 0, state: stateName(v.state) }))
    .sort((a, b) => versionNumber(a.version) - versionNumber(b.version) || a.version.localeCompare(b.version));
}

const versionNumber = (id: string) => Number(/^v(\d+)$/.exec(id)?.[1] ?? Number.MAX_SAFE_INTEGER);

/** "v1 90% · v2 10%", or "no traffic". */
export function trafficText(versions: DeploymentVersion[] | undefined): string {
  const segments = trafficSegments(versions);
  return segments.length ? segments.map((s) => `${s.version} ${s.percent}%`).join(" · ") : "no traffic";
}

/** A canary is out, as the server tells one (promote and roll back need it): two versions
 * that are serving or starting share the traffic. */
export function hasCanary(d: Deployment): boolean {
  const weighted = (d.versions ?? []).filter((v) => (v.traffic_percent ?? 0) > 0 &&
    (v.state === "DEPLOYMENT_VERSION_STATE_PENDING" || v.state === "DEPLOYMENT_VERSION_STATE_SERVING"));
  return weighted.length > 1;
}

/** "2026-01-31 12:00:00" for an RFC 3339 time (UTC): no fraction, no zone letter. */
export const shortTime = (ts: string | undefined) => (ts ?? "").replace("T", " ").replace(/(\.\d+)?Z$/, "");

/** A model source from the create / rollout forms' fields: a model id, or a run's artifact. */
export function sourceFrom(runId: string, path: string, modelId: string): ModelSource | string {
  runId = runId.trim();
  modelId = modelId.trim();
  if (runId && modelId) return "Give a run or a model id, not both.";
  if (modelId) return { model_id: modelId };
  if (!runId) return "Give the run whose model to serve (or a registry model's id).";
  return { run_artifact: { run_id: runId, path: path.trim() || "model.onnx" } };
}
