// The platform's REST API as the gateway serves it (gateway/openapi.json): JSON with the protos'
// field names, int64 values as strings, errors as google.rpc.Status with their details.

import { getKey } from "./session";

export type Role = "ROLE_ADMIN" | "ROLE_USER" | "ROLE_VIEWER" | "ROLE_UNSPECIFIED";

export interface Principal {
  subject: string;
  role: Role;
  key_id?: string;
}

export interface Experiment {
  id: string;
  name: string;
  owner?: string;
  create_time?: string;
  run_count?: number;
}

export interface Metric {
  key: string;
  value: number;
  step: string; // int64
  timestamp?: string;
}

export type RunStatus =
  | "RUN_STATUS_UNSPECIFIED"
  | "RUN_STATUS_RUNNING"
  | "RUN_STATUS_FINISHED"
  | "RUN_STATUS_FAILED"
  | "RUN_STATUS_KILLED";

export interface Run {
  id: string;
  experiment_id: string;
  name: string;
  status: RunStatus;
  start_time?: string;
  end_time?: string;
  owner?: string;
  params: Record<string, string>;
  tags: Record<string, string>;
  latest_metrics: Metric[];
  job_id?: string;
}

export interface RunEvent {
  run_id: string;
  type: string; // "status" | "metrics"
  metrics?: Metric[];
  status?: RunStatus;
  run?: Run;
}

export interface Artifact {
  path: string;
  is_dir: boolean;
  size_bytes: string;
}

export interface HistoryColumns {
  steps: string[];
  values: number[];
  downsampled: boolean;
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call: the google.rpc.Status the gateway answered (or a stand-in for one). */
export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly code: number,
    message: string,
    readonly violations: FieldViolation[] = [],
  ) {
    super(message);
    this.name = "ApiError";
  }
}

/** The ApiError for an error answer's body, whatever it holds (Envoy may answer plain text). */
export function errorFromBody(httpStatus: number, body: string): ApiError {
  let status: unknown;
  try {
    status = JSON.parse(body);
  } catch {
    return new ApiError(httpStatus, 2, body.trim() || `HTTP ${httpStatus}`);
  }
  const s = (status ?? {}) as { code?: number; message?: string; details?: unknown[] };
  const violations: FieldViolation[] = [];
  for (const detail of s.details ?? []) {
    const d = detail as Record<string, unknown>;
    if (!String(d["@type"] ?? "").endsWith("google.rpc.BadRequest")) continue;
    // preserve_proto_field_names gives field_violations; accept the JSON name too.
    const list = (d.field_violations ?? d.fieldViolations ?? []) as FieldViolation[];
    violations.push(...list.map((v) => ({ field: v.field ?? "", description: v.description ?? "" })));
  }
  return new ApiError(httpStatus, s.code ?? 2, s.message || `HTTP ${httpStatus}`, violations);
}

/** Signed-out callers (a revoked key) are sent back to sign-in by main.ts. */
let onUnauthenticated: (err: ApiError) => void = () => {};
export function setUnauthenticatedHandler(handler: (err: ApiError) => void): void {
  onUnauthenticated = handler;
}

/** A call through the gateway with the signed-in key; a failed one throws its ApiError. */
export async function send(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
  const headers: Record<string, string> = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) {
    const err = errorFromBody(response.status, await response.text());
    if (response.status === 401) onUnauthenticated(err);
    throw err;
  }
  return response;
}

/** A call whose answer is JSON. */
export async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  return (await (await send(method, path, body)).json()) as T;
}

export const enc = encodeURIComponent;
/** Keys and artifact paths may hold slashes, which the routes take as segments. */
export const encPath = (path: string) => path.split("/").map(enc).join("/");

export const whoami = () => call<Principal>("GET", "/v1/whoami");

export async function listExperiments(pageToken = ""): Promise<{ experiments: Experiment[]; next_page_token: string }> {
  const q = new URLSearchParams({ page_size: "100" });
  if (pageToken) q.set("page_token", pageToken);
  return call("GET", `/v1/experiments?${q}`);
}

export const getExperiment = (id: string) => call<Experiment>("GET", `/v1/experiments/${enc(id)}`);
export const createExperiment = (name: string) => call<Experiment>("POST", "/v1/experiments", { name });
export const deleteExperiment = (id: string) => call<Experiment>("DELETE", `/v1/experiments/${enc(id)}`);

export async function searchRuns(
  experimentId: string,
  filter: string,
  orderBy: string[],
  pageToken = "",
): Promise<{ runs: Run[]; next_page_token: string }> {
  return call("POST", "/v1/runs:search", {
    experiment_ids: [experimentId],
    filter,
    order_by: orderBy,
    page_size: 100,
    page_token: pageToken,
  });
}

export const getRun = (id: string) => call<Run>("GET", `/v1/runs/${enc(id)}`);

export const setTags = (runId: string, tags: Record<string, string>) =>
  call<object>("POST", `/v1/runs/${enc(runId)}:setTags`, { tags });

/** A metric's history as columns, downsampled by the server to at most maxPoints. */
export async function metricHistory(runId: string, key: string, maxPoints: number): Promise<HistoryColumns> {
  const out: HistoryColumns = { steps: [], values: [], downsampled: false };
  let token = "";
  // With max_points the sample is at most maxPoints long, so a page of that size is the whole of
  // it; the loop is there should the server ever page it anyway (bounded, to be safe).
  for (let page = 0; page < 10; page++) {
    const q = new URLSearchParams({
      max_points: String(maxPoints),
      page_size: String(maxPoints),
      view: "METRIC_HISTORY_VIEW_COLUMNS",
    });
    if (token) q.set("page_token", token);
    const r = await call<HistoryColumns & { next_page_token: string }>(
      "GET",
      `/v1/runs/${enc(runId)}/metrics/${encPath(key)}?${q}`,
    );
    out.steps.push(...(r.steps ?? []));
    out.values.push(...(r.values ?? []));
    out.downsampled ||= Boolean(r.downsampled);
    token = r.next_page_token ?? "";
    if (!token) break;
  }
  return out;
}

export async function listArtifacts(runId: string, path = ""): Promise<Artifact[]> {
  const q = new URLSearchParams({ page_size: "1000" });
  if (path) q.set("path", path);
  const r = await call<{ artifacts: Artifact[] }>("GET", `/v1/runs/${enc(runId)}/artifacts?${q}`);
  return r.artifacts ?? [];
}

export const artifactUrl = (runId: string, path: string) =>
  `/v1/runs/${enc(runId)}/artifacts/${encPath(path)}:download`;

/** The file's bytes: a plain link cannot carry the bearer key, so the page fetches them. */
export async function downloadArtifact(runId: string, path: string): Promise<Blob> {
  return (await send("GET", artifactUrl(runId, path))).blob();
}

/**
 * Reads a newline-delimited JSON stream, calling onItem per line as it arrives; resolves when
 * the stream ends. A line that is a google.rpc.Status (a stream that failed after it started)
 * is thrown as an ApiError.
 */
export async function readNdjson<T>(body: ReadableStream<Uint8Array>, onItem: (item: T) => void): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder(); // stream mode: a character split between chunks survives
  let buffered = "";
  const emit = (line: string) => {
    if (!line.trim()) return;
    const item = JSON.parse(line) as Record<string, unknown>;
    if (typeof item.code === "number" && typeof item.message === "string" && item.code !== 0) {
      throw errorFromBody(200, line);
    }
    onItem(item as T);
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffered += decoder.decode(value, { stream: true });
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    lines.forEach(emit);
  }
  emit(buffered + decoder.decode());
}

/** WatchRun: the run's status first, then new metric points and status changes until it ends. */
export async function watchRun(runId: string, onEvent: (e: RunEvent) => void, signal: AbortSignal): Promise<void> {
  const response = await send("GET", `/v1/runs/${enc(runId)}:watch`, undefined, signal);
  if (response.body) await readNdjson<RunEvent>(response.body, onEvent);
}
