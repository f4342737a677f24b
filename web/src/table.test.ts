import { describe, expect, it } from "vitest";
import type { Run } from "./api";
import { cellValue, columnsOf, formatValue, nextSort, orderBy } from "./table";

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
