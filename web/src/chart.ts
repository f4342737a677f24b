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
