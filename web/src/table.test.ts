import { describe, expect, it } from "vitest";
import type { Run } from "./api";
import { canCompare, cellValue, columnsOf, formatValue, needsMore, nextSort, orderBy, rowWindow } from "./table";

const run = (id: string, params: Record<string, string>, metrics: Record<string, number>): Run => ({
  id,
  experiment_id: "e",
  name: `run ${id}`,
  status: "RUN_STATUS_FINISHED",
  params,
  tags: {},
  latest_metrics: Object.entries(metrics).map(([key, value]) => ({ key, value, step: "1" })),
});

const runs = [run("a", { lr: "0.1" }, { loss: 0.5 }), run("b", { opt: "adam" }, { acc: 0.9, loss: 0.25 })];

describe("run table", () => {
  it("has a column per param and metric key any run has", () => {
    expect(columnsOf(runs)).toEqual(["name", "status", "params.lr", "params.opt", "metrics.acc", "metrics.loss"]);
  });

  it("shows each run's value, empty where it has none", () => {
    expect(cellValue(runs[0], "metrics.loss")).toBe(0.5);
    expect(cellValue(runs[0], "metrics.acc")).toBe("");
    expect(cellValue(runs[1], "params.opt")).toBe("adam");
    expect(cellValue(runs[1], "status")).toBe("FINISHED");
    expect(cellValue(runs[1], "name")).toBe("run b");
  });

  it("sorts by the server: ascending, descending, then the default", () => {
    let sort = nextSort(null, "metrics.loss");
    expect(orderBy(sort)).toEqual(["metrics.loss ASC"]);
    sort = nextSort(sort, "metrics.loss");
    expect(orderBy(sort)).toEqual(["metrics.loss DESC"]);
    sort = nextSort(sort, "metrics.loss");
    expect(orderBy(sort)).toEqual([]);
    expect(orderBy(nextSort({ column: "name", descending: true }, "params.lr"))).toEqual(["params.lr ASC"]);
  });

  it("backquotes keys that are not plain words", () => {
    expect(orderBy({ column: "metrics.val loss", descending: false })).toEqual(["metrics.`val loss` ASC"]);
    expect(orderBy({ column: "metrics.train/loss", descending: true })).toEqual(["metrics.train/loss DESC"]);
  });

  it("formats numbers short without losing their magnitude", () => {
    expect(formatValue(3)).toBe("3");
    expect(formatValue(0.123456)).toBe("0.1235");
    expect(formatValue(1.5e-7)).toBe("1.500e-7");
    expect(formatValue("adam")).toBe("adam");
  });
});

describe("the virtualized run table's window", () => {
  it("renders the rows in view and a margin, spacers for the rest", () => {
    // 10,000 rows of 28 px, 560 px of view (20 rows), scrolled to row 100
    const w = rowWindow(100 * 28, 560, 28, 10_000, 10);
    expect(w).toEqual({ first: 90, last: 130, padTop: 90 * 28, padBottom: (10_000 - 130) * 28 });
    expect(w.last - w.first).toBeLessThan(50);
  });

  it("clamps at the top and the bottom", () => {
    expect(rowWindow(0, 560, 28, 10_000, 10)).toEqual({ first: 0, last: 30, padTop: 0, padBottom: 9970 * 28 });
    const end = rowWindow(10_000 * 28 - 560, 560, 28, 10_000, 10);
    expect(end.last).toBe(10_000);
    expect(end.first).toBe(9970);
    expect(end.padBottom).toBe(0);
    // a scrollTop past the rows (a new filter left fewer) still shows the last ones
    expect(rowWindow(1e6, 560, 28, 5, 10)).toEqual({ first: 0, last: 5, padTop: 0, padBottom: 0 });
  });

  it("takes a partly visible row as visible", () => {
    const w = rowWindow(14, 28, 28, 100, 0); // half of row 0 and half of row 1
    expect([w.first, w.last]).toEqual([0, 2]);
  });

  it("has nothing to render without rows", () => {
    expect(rowWindow(0, 560, 28, 0, 10)).toEqual({ first: 0, last: 0, padTop: 0, padBottom: 0 });
  });

  it("asks for the next page near the loaded end", () => {
    expect(needsMore(rowWindow(0, 560, 28, 500, 10), 500, 50)).toBe(false);
    expect(needsMore(rowWindow(440 * 28, 560, 28, 500, 10), 500, 50)).toBe(true);
    expect(needsMore(rowWindow(0, 560, 28, 20, 10), 20, 50)).toBe(true); // the view is not full
  });

  it("compares 2 to 100 runs", () => {
    expect([1, 2, 100, 101].map(canCompare)).toEqual([false, true, true, false]);
  });
});
