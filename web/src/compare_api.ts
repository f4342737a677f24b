// The REST calls of the compare page and of the run table's paging (gateway/openapi.json):
// CompareRuns, and SearchRuns with a page size of the caller's choosing.

import { call, type Run, type RunStatus } from "./api";

export type Direction =
  | "OPTIMIZATION_DIRECTION_UNSPECIFIED"
  | "OPTIMIZATION_DIRECTION_MINIMIZE"
  | "OPTIMIZATION_DIRECTION_MAXIMIZE";

/** A metric's series reduced to what a comparison needs (int64 fields are strings in JSON). */
export interface MetricSummary {
  last: number;
  last_step: string;
  min: number;
  max: number;
  best: number;
  best_step: string;
  count: string;
}

/** A run's metric as columns in step order: every point, or the server's M4 sample of them. */
export interface MetricCurve {
  steps: string[]; // int64
  values: number[];
  downsampled?: boolean;
}

export interface RunComparison {
  run_id: string;
  run_name: string;
  experiment_id: string;
  status: RunStatus;
  params: Record<string, string>;
  metrics: Record<string, MetricSummary>;
  curves: Record<string, MetricCurve>;
}

export interface BestRun {
  metric_key: string;
  run_id: string;
  value: number;
  step: string;
  direction: Direction;
}

export interface Comparison {
  runs: RunComparison[];
  best_runs: Record<string, BestRun>;
  differing_params: string[];
}

/**
 * CompareRuns: the runs in the order asked, the best run per metric, the params that differ,
 * and with curvePoints each run's curves (at most that many points each): one call for the page.
 */
export async function compareRuns(runIds: string[], curvePoints = 0): Promise<Comparison> {
  const r = await call<Partial<Comparison>>("POST", "/v1/runs:compare", {
    run_ids: runIds,
    curve_points: curvePoints,
  });
  return {
    runs: (r.runs ?? []).map((c) => ({
      ...c,
      params: c.params ?? {},
      metrics: c.metrics ?? {},
      curves: Object.fromEntries(
        Object.entries(c.curves ?? {}).map(([k, v]) => [k, { ...v, steps: v.steps ?? [], values: v.values ?? [] }]),
      ),
    })),
    best_runs: r.best_runs ?? {},
    differing_params: r.differing_params ?? [],
  };
}

/** One page of an experiment's runs, sorted and filtered by the server (at most 1000 a page). */
export async function searchRunsPage(
  experimentId: string,
  filter: string,
  orderBy: string[],
  pageToken: string,
  pageSize: number,
): Promise<{ runs: Run[]; next_page_token: string }> {
  const r = await call<{ runs?: Run[]; next_page_token?: string }>("POST", "/v1/runs:search", {
    experiment_ids: [experimentId],
    filter,
    order_by: orderBy,
    page_size: pageSize,
    page_token: pageToken,
  });
  return { runs: r.runs ?? [], next_page_token: r.next_page_token ?? "" };
}
