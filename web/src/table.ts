// The run table's columns and order: pure functions, so the page only draws.

import type { Run } from "./api";

/** A column id, as SearchRuns' order_by and filter name it: name, params.lr, metrics.loss. */
export type Column = string;

export interface Sort {
  column: Column;
  descending: boolean;
}

/** name and status, then every param and metric key the runs have, each group sorted. */
export function columnsOf(runs: Run[]): Column[] {
  const params = new Set<string>();
  const metrics = new Set<string>();
  for (const run of runs) {
    Object.keys(run.params ?? {}).forEach((k) => params.add(k));
    (run.latest_metrics ?? []).forEach((m) => metrics.add(m.key));
  }
  const sorted = (s: Set<string>) => [...s].sort();
  return [
    "name",
    "status",
    ...sorted(params).map((k) => `params.${k}`),
    ...sorted(metrics).map((k) => `metrics.${k}`),
  ];
}

/** order_by's KEY: a key that is not a plain word is backquoted, as the filter language reads it. */
function orderKey(column: Column): string {
  const dot = column.indexOf(".");
  if (dot < 0) return column;
  const key = column.slice(dot + 1);
  return /^[A-Za-z0-9_\-/:]+$/.test(key) ? column : `${column.slice(0, dot)}.\`${key}\``;
}

/** SearchRuns' order_by for a sort; the server's default (newest first) when none. */
export function orderBy(sort: Sort | null): string[] {
  if (!sort) return [];
  return [`${orderKey(sort.column)} ${sort.descending ? "DESC" : "ASC"}`];
}

/** Clicking a header: a new column sorts ascending, the same one flips, the third click clears. */
export function nextSort(current: Sort | null, column: Column): Sort | null {
  if (!current || current.column !== column) return { column, descending: false };
  if (!current.descending) return { column, descending: true };
  return null;
}

/** What a cell shows: a run's value for the column ("" when it has none). */
export function cellValue(run: Run, column: Column): string | number {
  if (column === "name") return run.name || run.id;
  if (column === "status") return (run.status ?? "").replace("RUN_STATUS_", "");
  if (column.startsWith("params.")) return run.params?.[column.slice(7)] ?? "";
  if (column.startsWith("metrics.")) {
    const m = (run.latest_metrics ?? []).find((x) => x.key === column.slice(8));
    return m === undefined ? "" : m.value;
  }
  return "";
}

/** A metric for a cell: short, but never losing the order of magnitude. */
export function formatValue(value: string | number): string {
  if (typeof value === "string") return value;
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 1e-3 && Math.abs(value) < 1e6 ? value.toFixed(4) : value.toExponential(3);
}

/** The rows a virtualized table renders, [first, last), and the spacers' heights for the rest. */
export interface RowWindow {
  first: number;
  last: number;
  padTop: number;
  padBottom: number;
}

/**
 * The rows to render for a scroll position: those in view plus `margin` rows on each side.
 * scrollTop and viewport are in the rows' own coordinates (the header's height taken off), and
 * every row is rowHeight high, so a 10,000-row table keeps a few dozen rows in the DOM.
 */
export function rowWindow(
  scrollTop: number,
  viewport: number,
  rowHeight: number,
  count: number,
  margin: number,
): RowWindow {
  if (count <= 0 || rowHeight <= 0) return { first: 0, last: 0, padTop: 0, padBottom: 0 };
  const top = Math.max(0, scrollTop);
  // A scrollTop past the end (the rows shrank under it) still shows the last rows.
  const firstVisible = Math.min(count - 1, Math.floor(top / rowHeight));
  const lastVisible = Math.max(firstVisible + 1, Math.ceil((top + Math.max(0, viewport)) / rowHeight));
  const first = Math.max(0, firstVisible - margin);
  const last = Math.min(count, lastVisible + margin);
  return { first, last, padTop: first * rowHeight, padBottom: (count - last) * rowHeight };
}

/** Whether to fetch the next page: the rendered rows reach within `ahead` rows of the loaded end. */
export const needsMore = (w: RowWindow, count: number, ahead: number): boolean => count - w.last <= ahead;

/** CompareRuns takes 2 to 100 runs. */
export const COMPARE_MIN = 2;
export const COMPARE_MAX = 100;
export const canCompare = (selected: number): boolean => selected >= COMPARE_MIN && selected <= COMPARE_MAX;
