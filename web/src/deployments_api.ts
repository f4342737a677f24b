// The deployer's REST calls (protos/neural/v1/deployer.proto, as gateway/openapi.json serves
// them) and their types, and the serving model's input shape read from where it was made.

import { call, enc, send, type Run } from "./api";

export type DeploymentState =
  | "DEPLOYMENT_STATE_UNSPECIFIED"
  | "DEPLOYMENT_STATE_PENDING"
  | "DEPLOYMENT_STATE_READY"
  | "DEPLOYMENT_STATE_FAILED"
  | "DEPLOYMENT_STATE_DELETING";

export type VersionState =
  | "DEPLOYMENT_VERSION_STATE_UNSPECIFIED"
  | "DEPLOYMENT_VERSION_STATE_PENDING"
  | "DEPLOYMENT_VERSION_STATE_SERVING"
  | "DEPLOYMENT_VERSION_STATE_FAILED"
  | "DEPLOYMENT_VERSION_STATE_RETIRED";

export interface RunArtifactRef {
  run_id: string;
  path: string;
}

/** Where a deployment's (or a version's) model comes from: one of the two. */
export interface ModelSource {
  run_artifact?: RunArtifactRef;
  model_id?: string;
}

export interface DeploymentVersion extends ModelSource {
  id: string;
  traffic_percent?: number;
  state?: VersionState;
  ready_replicas?: number;
  error?: string;
  create_time?: string;
  rollout_job_id?: string;
}

export interface Deployment extends ModelSource {
  id: string;
  name: string;
  runtime?: string;
  replicas?: number;
  ready_replicas?: number;
  state?: DeploymentState;
  error?: string;
  endpoint?: string;
  owner?: string;
  create_time?: string;
  update_time?: string;
  min_replicas?: number;
  max_replicas?: number;
  versions?: DeploymentVersion[];
  model_version?: string;
  rollout_job_id?: string;
}

export interface Tensor {
  name?: string;
  shape?: string[]; // int64
  dtype?: string;
  float_data?: (number | string)[]; // proto JSON writes NaN and infinities as strings
  int64_data?: string[];
}

/** What the page sends to Predict: exactly one of the two (the id is the URL's). */
export interface PredictBody {
  instances?: unknown[];
  inputs?: unknown[];
}

export interface PredictResponse {
  outputs?: Tensor[];
  model_version?: string;
  predictions?: unknown[];
}

// ---- calls ---------------------------------------------------------------------------------

/** Every deployment the key sees (pages of 100, bounded: a console lists, it does not crawl). */
export async function listDeployments(): Promise<Deployment[]> {
  const found: Deployment[] = [];
  let token = "";
  for (let page = 0; page < 10; page++) {
    const q = new URLSearchParams({ page_size: "100" });
    if (token) q.set("page_token", token);
    const r = await call<{ deployments?: Deployment[]; next_page_token?: string }>("GET", `/v1/deployments?${q}`);
    found.push(...(r.deployments ?? []));
    token = r.next_page_token ?? "";
    if (!token) break;
  }
  return found;
}

export const getDeployment = (id: string) => call<Deployment>("GET", `/v1/deployments/${enc(id)}`);

/** Returns at once in state PENDING; the replicas start afterwards. */
export const createDeployment = (name: string, source: ModelSource) =>
  call<Deployment>("POST", "/v1/deployments", { name, ...source });

export const deleteDeployment = (id: string) => call<Deployment>("DELETE", `/v1/deployments/${enc(id)}`);

export const scaleDeployment = (id: string, replicas: number) =>
  call<Deployment>("POST", `/v1/deployments/${enc(id)}:scale`, { replicas });

/** A canary of another model taking `trafficPercent` of the predictions (100: a replacement). */
export const rolloutDeployment = (id: string, source: ModelSource, trafficPercent: number) =>
  call<Deployment>("POST", `/v1/deployments/${enc(id)}:rollout`, { ...source, traffic_percent: trafficPercent });

export const promoteDeployment = (id: string) => call<Deployment>("POST", `/v1/deployments/${enc(id)}:promote`, {});
export const rollbackDeployment = (id: string) => call<Deployment>("POST", `/v1/deployments/${enc(id)}:rollback`, {});

export const predict = (id: string, body: PredictBody) =>
  call<PredictResponse>("POST", `/v1/deployments/${enc(id)}:predict`, body);

// ---- the model's input shape -----------------------------------------------------------------

interface NamedShape {
  name?: string;
  shape?: string[];
}
interface ShapeReport {
  network?: string;
  inputs?: NamedShape[];
}

/**
 * The serving model's input shape (batch first, -1 where unknown), or null when it cannot be
 * told. A Deployment does not carry it, so it comes from where the model was made: a registry
 * model's shape report, or a trained run's program (its `model.neural` artifact, or the
 * registry model it was trained from) run through Validate. All reads a viewer may make too.
 */
export async function inputShape(source: ModelSource): Promise<number[] | null> {
  if (source.model_id) {
    const model = await call<{ network?: string; shapes?: ShapeReport }>("GET", `/v1/models/${enc(source.model_id)}`);
    return firstInput(model.shapes);
  }
  const runId = source.run_artifact?.run_id;
  if (!runId) return null;
  const run = await call<Run>("GET", `/v1/runs/${enc(runId)}`);
  if (run.params?.model_id) return inputShape({ model_id: run.params.model_id });
  const program = await (await send("GET", `/v1/runs/${enc(runId)}/artifacts/model.neural:download`)).text();
  const checked = await call<{ valid?: boolean; shapes?: Record<string, ShapeReport> }>(
    "POST", "/v1/programs:validate", { source: program });
  const shapes = checked.shapes ?? {};
  const network = run.params?.network;
  const report = (network && shapes[network]) || Object.values(shapes)[0];
  return firstInput(report);
}

function firstInput(report: ShapeReport | undefined): number[] | null {
  const shape = report?.inputs?.[0]?.shape;
  return shape && shape.length ? shape.map(Number) : null;
}
