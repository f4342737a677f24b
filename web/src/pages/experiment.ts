// One experiment's runs: a table sorted by the server (SearchRuns order_by) and filtered with
// SearchRuns' language, whose parse errors point at their column.
//
// The table is virtual, so an experiment of 10,000 runs scrolls smoothly: a fixed-height box
// holds the header (sticky) and only the rows in view plus a margin, two spacer rows standing
// for the others; scrolling near the end of what is loaded fetches the next page with the same
// sort and filter. A checkbox per row picks runs to compare (reading only: viewers too).

import { deleteExperiment, getExperiment, type Run } from "../api";
import { searchRunsPage } from "../compare_api";
import { append, clear, errorText, h, type Dispose } from "../dom";
import { caretLines, errorSelection, filterError } from "../filter";
import { go, href } from "../router";
import { canWrite } from "../session";
import {
  canCompare, cellValue, columnsOf, COMPARE_MAX, COMPARE_MIN, formatValue, needsMore, nextSort, orderBy,
  rowWindow, type Column, type RowWindow, type Sort,
} from "../table";

const PAGE_SIZE = 500; // runs a SearchRuns call returns (the server allows 1000)
const ROW_PX = 29; // a row's height as style.css sets it; measured once rows are drawn
const MARGIN = 15; // rows rendered beyond the view on each side
const AHEAD = 100; // fetch the next page when the rendered rows come this close to the end
const [PICK_PX, NAME_PX, STATUS_PX, VALUE_PX] = [36, 240, 100, 130]; // column widths

export function experimentPage(root: HTMLElement, id: string): Dispose {
  let alive = true;
  let sort: Sort | null = null;
  let runs: Run[] = [];
  let token = "";
  let query = { filter: "", orderBy: [] as string[] }; // what the loaded pages were asked with
  let stalled = false;
  let loading = false;
  let generation = 0; // a new sort or filter makes older answers stale
  let rowHeight = ROW_PX;
  let shown: RowWindow | null = null;
  let frame = 0;
  // Columns only grow while a page is open, so a sort or filter never hides the header just
  // clicked when the runs shown lack that key.
  const columns: Column[] = [];
  const selected = new Set<string>();

  const title = h("h1", {}, "Experiment");
  const filter = h("input", {
    "data-testid": "run-filter", class: "filter", spellcheck: "false", size: 80,
    placeholder: "metrics.loss < 0.5 and params.optimizer = 'adam'   (Enter to apply)",
  });
  const filterErr = h("div", { "data-testid": "filter-error", class: "filter-error", hidden: true });
  const colgroup = h("colgroup", {});
  const thead = h("thead", {});
  const tbody = h("tbody", {});
  const table = h("table", { "data-testid": "runs-table", class: "runs virtual", "data-loaded": 0, "data-complete": "false", "aria-busy": "true" },
    colgroup, thead, tbody);
  const scroller = h("div", { class: "runs-scroll", "data-testid": "runs-scroll" }, table);
  const status = h("p", { class: "muted", "data-testid": "runs-status" }, "Loading…");
  const compare = h("button", { type: "button", "data-testid": "compare-runs", disabled: true }, "Compare");
  const picked = h("span", { class: "muted", "data-testid": "compare-count" });

  function showFilterError(err: unknown): boolean {
    const fe = filterError(err);
    if (!fe) return false;
    clear(filterErr);
    filterErr.hidden = false;
    if (fe.column !== null) {
      filterErr.setAttribute("data-column", String(fe.column));
      const [text, caret] = caretLines(filter.value, fe.column);
      filterErr.append(h("pre", {}, `${text}\n${caret}`));
      const [start, end] = errorSelection(filter.value, fe.column);
      filter.setSelectionRange(start, end);
      filter.focus();
    } else filterErr.removeAttribute("data-column");
    filterErr.append(h("span", {}, fe.column !== null ? `column ${fe.column}: ${fe.message}` : fe.message));
    return true;
  }

  /** The first page (a new sort or filter: back to the top), or the next one (append). */
  async function load(append: boolean): Promise<void> {
    if (append && (loading || !token)) return;
    const mine = append ? generation : ++generation;
    loading = true;
    // Set before the first await, so a click that starts a load returns with the table busy:
    // what is drawn until aria-busy is "false" again is the old sort's (tests wait on it).
    table.setAttribute("aria-busy", "true");
    status.textContent = "Loading…";
    status.className = "muted";
    try {
      // Further pages keep the query of the first, whatever the box holds by then.
      const q = append ? query : { filter: filter.value, orderBy: orderBy(sort) };
      const page = await searchRunsPage(id, q.filter, q.orderBy, append ? token : "", PAGE_SIZE);
      if (!alive || mine !== generation) return;
      query = q;
      stalled = false;
      filterErr.hidden = true;
      filterErr.removeAttribute("data-column");
      runs = append ? runs.concat(page.runs) : page.runs;
      token = page.next_page_token;
      if (!append) scroller.scrollTop = 0;
      showStatus();
      for (const c of columnsOf(page.runs)) if (!columns.includes(c)) columns.push(c);
      drawHead();
      shown = null;
      drawRows();
    } catch (err) {
      if (!alive || mine !== generation) return;
      stalled = append; // a next page that failed is asked again on the next scroll, not at once
      status.textContent = "";
      if (!showFilterError(err)) {
        status.textContent = errorText(err);
        status.className = "error";
      }
    } finally {
      if (mine === generation) {
        loading = false;
        table.setAttribute("aria-busy", "false");
      }
    }
    // A page that leaves the view short of rows (or a scroll that went on meanwhile) asks for more.
    if (alive && mine === generation) drawRows();
  }

  function showStatus(): void {
    status.className = "muted";
    status.textContent = runs.length === 0 ? "No runs match."
      : token ? `${runs.length} runs loaded, more as you scroll` : `${runs.length} runs`;
    table.setAttribute("data-loaded", String(runs.length));
    table.setAttribute("data-complete", String(!token));
  }

  function drawHead(): void {
    // Fixed column widths: rows coming and going as one scrolls must not move the columns.
    const widths = [PICK_PX, ...columns.map((c) => (c === "name" ? NAME_PX : c === "status" ? STATUS_PX : VALUE_PX))];
    clear(colgroup);
    colgroup.append(...widths.map((px) => h("col", { style: `width:${px}px` })));
    table.style.width = `${widths.reduce((a, b) => a + b, 0)}px`;
    clear(thead);
    thead.append(h("tr", {}, h("th", { class: "pick", title: `Pick ${COMPARE_MIN} to ${COMPARE_MAX} runs to compare` }, "✓"),
      ...columns.map((c) => {
        const mark = sort?.column === c ? (sort.descending ? " ▼" : " ▲") : "";
        return h("th", {
          "data-testid": `sort-${c}`, class: "sortable", title: `Sort by the server: ${c}`,
          "aria-sort": sort?.column === c ? (sort.descending ? "descending" : "ascending") : "none",
          onclick: () => {
            sort = nextSort(sort, c);
            drawHead();
            void load(false);
          },
        }, c + mark);
      })));
  }

  /** The rows in view (and a margin), between spacers; redrawn only when that window moves. */
  function drawRows(): void {
    const viewport = scroller.clientHeight - thead.offsetHeight;
    const w = rowWindow(scroller.scrollTop, viewport, rowHeight, runs.length, MARGIN);
    if (!shown || w.first !== shown.first || w.last !== shown.last) {
      shown = w;
      const span = columns.length + 1;
      clear(tbody);
      append(tbody, spacer(w.padTop, span), ...runs.slice(w.first, w.last).map(row), spacer(w.padBottom, span));
      // Fonts decide the real height: measure it once, and place the rows by it from then on.
      const measured = tbody.querySelector("tr[data-testid=run-row]")?.getBoundingClientRect().height ?? 0;
      if (measured > 0 && Math.abs(measured - rowHeight) > 0.01) {
        rowHeight = measured;
        shown = null;
        return drawRows();
      }
    }
    if (token && !loading && !stalled && needsMore(w, runs.length, AHEAD)) void load(true);
  }

  function row(run: Run): HTMLTableRowElement {
    const box = h("input", {
      type: "checkbox", "data-testid": "run-select", "data-run-id": run.id,
      "aria-label": `Compare ${run.name || run.id}`, checked: selected.has(run.id),
    });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(run.id);
      else selected.delete(run.id);
      showPicked();
    });
    return h("tr", { "data-testid": "run-row", "data-run-id": run.id, class: "run-row" },
      h("td", { class: "pick" }, box),
      ...columns.map((c) => {
        const value = formatValue(cellValue(run, c));
        return h("td", { class: c.startsWith("metrics.") ? "num" : "", title: value },
          c === "name" ? h("a", { href: href({ page: "run", id: run.id }) }, value) : value);
      }));
  }

  function showPicked(): void {
    compare.disabled = !canCompare(selected.size);
    picked.textContent = selected.size === 0 ? `pick ${COMPARE_MIN} to ${COMPARE_MAX} runs`
      : `${selected.size} picked${selected.size > COMPARE_MAX ? ` (at most ${COMPARE_MAX})` : ""}`;
  }

  scroller.addEventListener("scroll", () => {
    stalled = false;
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (alive) drawRows();
    });
  }, { passive: true });
  // The box grows with its first rows (up to its max-height) and with the window: a new
  // height shows more rows, and no scroll event says so.
  const resized = new ResizeObserver(() => alive && drawRows());
  resized.observe(scroller);
  filter.addEventListener("keydown", (event) => {
    if (event.key === "Enter") void load(false);
  });
  compare.addEventListener("click", () => {
    if (canCompare(selected.size)) go({ page: "compare", ids: [...selected] });
  });

  root.append(title);
  if (canWrite()) {
    root.append(h("button", {
      type: "button", class: "danger", "data-testid": "delete-experiment", "data-write": true,
      onclick: async () => {
        if (!confirm("Delete this experiment? (It can be restored.)")) return;
        try {
          await deleteExperiment(id);
          go({ page: "experiments" });
        } catch (err) {
          status.textContent = errorText(err);
          status.className = "error";
        }
      },
    }, "Delete experiment"));
  }
  showPicked();
  root.append(h("div", { class: "filter-box" }, filter, filterErr),
    h("div", { class: "inline" }, compare, picked), status, scroller);

  getExperiment(id).then(
    (e) => alive && (title.textContent = e.name),
    (err) => {
      if (!alive) return;
      status.textContent = errorText(err);
      status.className = "error";
    },
  );
  void load(false);
  return () => {
    alive = false;
    resized.disconnect();
    if (frame) cancelAnimationFrame(frame);
  };
}

/** A row standing for `height` pixels of rows not rendered (none when there are none). */
function spacer(height: number, span: number): HTMLTableRowElement | null {
  if (height <= 0) return null;
  return h("tr", { class: "spacer", "aria-hidden": "true" },
    h("td", { colspan: span, style: `height:${height}px` }));
}
