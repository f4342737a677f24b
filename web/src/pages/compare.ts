// Several runs side by side (#/compare/<id>,<id>,...): one CompareRuns call answers all of it
// (the best run per metric by its direction, every param and metric summary, and each run's
// curves downsampled by the server), drawn as a chart per metric key with a line per run and a
// diff table that can hide what is the same. Comparing only reads: viewers see all of it.

import { OverlayChart, seriesColor } from "../chart";
import { alignSeries, diffRows, directionText, metricKeys, runLabels, type Points } from "../compare";
import { compareRuns, type Comparison } from "../compare_api";
import { clear, errorText, h, type Dispose } from "../dom";
import { href } from "../router";
import { formatValue } from "../table";

const CURVE_POINTS = 500; // per line: a chart of many runs needs fewer points per run

export function comparePage(root: HTMLElement, ids: string[]): Dispose {
  let alive = true;
  const charts: OverlayChart[] = [];

  const back = h("a", { href: "#/experiments" }, "← experiments");
  const title = h("h1", {}, `Compare ${ids.length} runs`);
  const status = h("p", { class: "muted" }, "Loading…");
  const best = h("ul", { class: "best-runs" });
  const chartBox = h("div", { class: "charts" });
  const table = h("table", { "data-testid": "compare-table", class: "compare" });
  const onlyDiff = h("input", { type: "checkbox", "data-testid": "only-differences" });
  onlyDiff.addEventListener("change", () => table.classList.toggle("only-differences", onlyDiff.checked));

  root.append(back, title, status,
    h("h2", {}, "Best run per metric"), best,
    h("h2", {}, "Metrics"), chartBox,
    h("h2", {}, "Params and metrics"),
    h("label", { class: "inline" }, onlyDiff, "Only differences"),
    table);

  function show(cmp: Comparison): void {
    const runs = cmp.runs;
    const labels = runLabels(runs);
    const nameOf = new Map(runs.map((r, i) => [r.run_id, labels[i]]));
    if (runs[0]) {
      back.setAttribute("href", href({ page: "experiment", id: runs[0].experiment_id }));
      back.textContent = "← runs of the experiment";
    }

    clear(best);
    const keys = metricKeys(runs);
    for (const key of keys) {
      const b = cmp.best_runs[key];
      if (!b) continue;
      best.append(h("li", { "data-testid": "best-run", "data-key": key, "data-run-id": b.run_id },
        h("strong", {}, key), ": ",
        h("a", { href: href({ page: "run", id: b.run_id }) }, nameOf.get(b.run_id) ?? b.run_id),
        ` ${formatValue(b.value)} at step ${b.step} `,
        h("span", { class: "muted" }, `(${directionText(b.direction)})`)));
    }
    if (best.childElementCount === 0) best.append(h("li", { class: "muted" }, "No metrics."));

    // The table: a column per run, a row per param and metric; the best run's cell marked.
    const head = h("tr", {}, h("th", {}, ""), ...runs.map((r, i) =>
      h("th", { "data-run-id": r.run_id },
        h("span", { class: "swatch", style: `background:${seriesColor(i)}` }),
        h("a", { href: href({ page: "run", id: r.run_id }) }, labels[i]),
        h("div", { class: "muted" }, (r.status ?? "").replace("RUN_STATUS_", "")))));
    const body = h("tbody", {});
    for (const row of diffRows(runs)) {
      const metric = row.kind === "metric" ? row.key.slice("metrics.".length) : null;
      const winner = metric !== null ? cmp.best_runs[metric] : undefined;
      body.append(h("tr", {
        "data-testid": "diff-row", "data-key": row.key, "data-differs": String(row.differs),
        class: row.differs ? "differs" : "same",
      }, h("th", {}, row.key), ...row.values.map((value, i) => {
        const isBest = winner !== undefined && winner.run_id === runs[i].run_id;
        return h("td", { class: [metric !== null ? "num" : "", isBest ? "best" : ""].join(" ").trim(),
          "data-best": isBest ? "true" : null,
          title: isBest ? `best ${metric}: ${formatValue(winner.value)} (${directionText(winner.direction)})` : null,
        }, value, isBest ? " ★" : "");
      })));
    }
    clear(table);
    table.append(h("thead", {}, head), body);

    // A chart per metric, a line per run that logged it.
    const empty: Points = { steps: [], values: [] };
    for (const key of keys) {
      const chart = new OverlayChart(key, labels);
      charts.push(chart);
      chartBox.append(chart.el);
      chart.setData(alignSeries(runs.map((r) => r.curves[key] ?? empty)));
    }
  }

  compareRuns(ids, CURVE_POINTS).then(
    (cmp) => {
      if (!alive) return;
      status.textContent = cmp.differing_params.length
        ? `Params that differ: ${cmp.differing_params.join(", ")}`
        : "The runs' params are the same.";
      show(cmp);
    },
    (err) => {
      if (!alive) return;
      status.textContent = errorText(err);
      status.className = "error";
    },
  );
  return () => {
    alive = false;
    charts.forEach((c) => c.destroy());
  };
}
