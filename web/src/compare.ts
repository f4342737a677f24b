// The compare page's logic, kept pure so the page only draws: the diff table's rows, the
// charts' series on one shared x axis, the runs' labels.

import type { Direction, RunComparison } from "./compare_api";
import { formatValue } from "./table";

/** A row of the diff table: one value per run ("" where a run has none). */
export interface DiffRow {
  key: string; // "params.lr", "metrics.loss"
  kind: "param" | "metric";
  values: string[];
  /** Whether the runs' values are not all the same; a missing value differs from any value. */
  differs: boolean;
}

/** The params (every key any run has, sorted), then the metrics' last values. */
export function diffRows(runs: RunComparison[]): DiffRow[] {
  const keysOf = (pick: (r: RunComparison) => object) =>
    [...new Set(runs.flatMap((r) => Object.keys(pick(r))))].sort();
  const row = (key: string, kind: DiffRow["kind"], raw: (string | undefined)[]): DiffRow => ({
    key,
    kind,
    values: raw.map((v) => v ?? ""),
    // undefined (missing) and "" stay apart here: a param logged empty is not a missing one
    differs: new Set(raw).size > 1,
  });
  return [
    ...keysOf((r) => r.params).map((k) => row(`params.${k}`, "param", runs.map((r) => r.params[k]))),
    ...keysOf((r) => r.metrics).map((k) =>
      row(`metrics.${k}`, "metric", runs.map((r) => {
        const m = r.metrics[k];
        return m === undefined ? undefined : formatValue(m.last);
      }))),
  ];
}

/** The metric keys any run has, sorted: one chart each. */
export const metricKeys = (runs: RunComparison[]): string[] =>
  [...new Set(runs.flatMap((r) => Object.keys(r.metrics)))].sort();

/** One run's points of a metric, as GetMetricHistory gives them (int64 steps as strings). */
export interface Points {
  steps: ArrayLike<number | string>;
  values: ArrayLike<number>;
}

/**
 * Series on one x axis, as uPlot draws several lines: the sorted union of every series' steps,
 * then per series its value at each of those steps, null where it has no point there (the
 * chart spans such gaps, so runs logging at different steps still draw as lines).
 */
export function alignSeries(series: Points[]): [number[], ...(number | null)[][]] {
  const maps = series.map((s) => {
    const m = new Map<number, number>();
    for (let i = 0; i < s.steps.length; i++) m.set(Number(s.steps[i]), s.values[i]);
    return m;
  });
  const xs = [...new Set(maps.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
  return [xs, ...maps.map((m) => xs.map((x) => m.get(x) ?? null))];
}

/** The runs' names for legends and headers; a name two runs share gets the run's id too. */
export function runLabels(runs: Pick<RunComparison, "run_id" | "run_name">[]): string[] {
  const count = new Map<string, number>();
  for (const r of runs) count.set(r.run_name || r.run_id, (count.get(r.run_name || r.run_id) ?? 0) + 1);
  return runs.map((r) => {
    const name = r.run_name || r.run_id;
    return (count.get(name) ?? 0) > 1 ? `${name} (${r.run_id.slice(0, 8)})` : name;
  });
}

export function directionText(direction: Direction): string {
  if (direction === "OPTIMIZATION_DIRECTION_MINIMIZE") return "lower is better";
  if (direction === "OPTIMIZATION_DIRECTION_MAXIMIZE") return "higher is better";
  return "direction unknown";
}
