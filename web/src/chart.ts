// One metric's chart: a uPlot canvas over a Series. Redraws are batched to one per animation
// frame, so a burst of streamed points costs one draw, not one per point.

import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "./dom";
import { Series } from "./series";

export class MetricChart {
  readonly el: HTMLElement;
  private readonly series = new Series();
  private readonly plot: uPlot;
  private pending = false;

  constructor(readonly key: string) {
    const canvas = h("div", { class: "plot" });
    this.el = h("section", { class: "chart", "data-testid": "chart", "data-key": key, "data-points": 0 },
      h("h3", {}, key), canvas);
    this.plot = new uPlot(
      {
        width: 560,
        height: 220,
        legend: { show: true },
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, { label: key, stroke: "#2563eb", width: 1.5 }],
      },
      [[], []],
      canvas,
    );
  }

  add(steps: ArrayLike<number | string>, values: ArrayLike<number>): void {
    this.series.add(steps, values);
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      // uPlot keeps the arrays it is given: hand it copies, as the Series mutates its own.
      this.plot.setData([this.series.steps.slice(), this.series.values.slice()]);
      this.el.setAttribute("data-points", String(this.series.length));
    });
  }

  destroy(): void {
    this.plot.destroy();
  }
}

/** Line colours for several runs on one chart; past these the hue wheel takes over. */
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
export const seriesColor = (i: number): string =>
  i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.5) % 360} 65% 45%)`;

/**
 * One metric of several runs overlaid: a line per run, the legend naming each run. The data
 * comes whole (the runs' histories on one x axis, see compare.ts alignSeries), not streamed.
 * data-series counts the lines that have points.
 */
export class OverlayChart {
  readonly el: HTMLElement;
  private readonly plot: uPlot;

  constructor(readonly key: string, labels: string[], testid = "compare-chart") {
    const canvas = h("div", { class: "plot" });
    this.el = h("section", { class: "chart", "data-testid": testid, "data-key": key, "data-series": 0 },
      h("h3", {}, key), canvas);
    this.plot = new uPlot(
      {
        width: 560,
        height: 240,
        legend: { show: true },
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [
          { label: "step" },
          ...labels.map((label, i) => ({ label, stroke: seriesColor(i), width: 1.5, spanGaps: true })),
        ],
      },
      [[], ...labels.map(() => [])],
      canvas,
    );
  }

  /** [steps, one array per run (null where that run has no point)]. */
  setData(data: [number[], ...(number | null)[][]]): void {
    this.plot.setData(data as uPlot.AlignedData);
    const drawn = data.slice(1).filter((ys) => ys.some((y) => y !== null)).length;
    this.el.setAttribute("data-series", String(drawn));
  }

  destroy(): void {
    this.plot.destroy();
  }
}
