import { describe, expect, it } from "vitest";
import { alignSeries, diffRows, directionText, metricKeys, runLabels } from "./compare";
import type { MetricSummary, RunComparison } from "./compare_api";

const summary = (last: number): MetricSummary => ({
  last, last_step: "9", min: last, max: last, best: last, best_step: "9", count: "10",
});

const run = (id: string, params: Record<string, string>, metrics: Record<string, number>): RunComparison => ({
  run_id: id,
  run_name: `run ${id}`,
  experiment_id: "e",
  status: "RUN_STATUS_FINISHED",
  params,
  metrics: Object.fromEntries(Object.entries(metrics).map(([k, v]) => [k, summary(v)])),
  curves: {},
});

describe("the diff table", () => {
  const runs = [
    run("a", { lr: "0.1", opt: "adam" }, { loss: 0.5, acc: 0.9 }),
    run("b", { lr: "0.01", opt: "adam", seed: "1" }, { loss: 0.25, acc: 0.9 }),
  ];

  it("has a row per param, then per metric, one value per run", () => {
    const rows = diffRows(runs);
    expect(rows.map((r) => r.key)).toEqual(["params.lr", "params.opt", "params.seed", "metrics.acc", "metrics.loss"]);
    expect(rows[0].values).toEqual(["0.1", "0.01"]);
    expect(rows[4].values).toEqual(["0.5000", "0.2500"]);
  });

  it("marks the rows whose values differ, a missing value included", () => {
    const differs = Object.fromEntries(diffRows(runs).map((r) => [r.key, r.differs]));
    expect(differs).toEqual({
      "params.lr": true, "params.opt": false, "params.seed": true, "metrics.acc": false, "metrics.loss": true,
    });
  });

  it("tells a param logged empty from a missing one", () => {
    const rows = diffRows([run("a", { note: "" }, {}), run("b", {}, {})]);
    expect(rows[0]).toMatchObject({ key: "params.note", values: ["", ""], differs: true });
  });

  it("lists the metric keys any run has, sorted", () => {
    expect(metricKeys([run("a", {}, { loss: 1 }), run("b", {}, { acc: 1, loss: 2 })])).toEqual(["acc", "loss"]);
  });
});

describe("series on one axis", () => {
  it("takes the union of the steps and leaves gaps where a run has no point", () => {
    const [xs, a, b] = alignSeries([
      { steps: ["0", "10", "20"], values: [1, 0.5, 0.25] },
      { steps: [5, 10], values: [0.9, 0.4] },
    ]);
    expect(xs).toEqual([0, 5, 10, 20]);
    expect(a).toEqual([1, null, 0.5, 0.25]);
    expect(b).toEqual([null, 0.9, 0.4, null]);
  });

  it("draws an empty chart for no points", () => {
    expect(alignSeries([{ steps: [], values: [] }])).toEqual([[], []]);
  });
});

describe("labels", () => {
  it("are the runs' names, with the id where two share one", () => {
    expect(runLabels([
      { run_id: "aaaaaaaa11", run_name: "x" },
      { run_id: "bbbbbbbb22", run_name: "x" },
      { run_id: "c", run_name: "" },
    ])).toEqual(["x (aaaaaaaa)", "x (bbbbbbbb)", "c"]);
  });

  it("say which way a metric is better", () => {
    expect(directionText("OPTIMIZATION_DIRECTION_MINIMIZE")).toBe("lower is better");
    expect(directionText("OPTIMIZATION_DIRECTION_MAXIMIZE")).toBe("higher is better");
  });
});
