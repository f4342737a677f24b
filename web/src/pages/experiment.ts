// One experiment's runs: a table sorted by the server (SearchRuns order_by) and filtered with
// SearchRuns' language, whose parse errors point at their column.

import { deleteExperiment, getExperiment, searchRuns, type Run } from "../api";
import { clear, errorText, h, type Dispose } from "../dom";
import { caretLines, errorSelection, filterError } from "../filter";
import { go, href } from "../router";
import { canWrite } from "../session";
import { cellValue, columnsOf, formatValue, nextSort, orderBy, type Column, type Sort } from "../table";

export function experimentPage(root: HTMLElement, id: string): Dispose {
  let alive = true;
  let sort: Sort | null = null;
  let runs: Run[] = [];
  let token = "";
  // Columns only grow while a page is open, so a sort or filter never hides the header just
  // clicked when the runs shown lack that key.
  const columns: Column[] = [];

  const title = h("h1", {}, "Experiment");
  const filter = h("input", {
    "data-testid": "run-filter", class: "filter", spellcheck: "false", size: 80,
    placeholder: "metrics.loss < 0.5 and params.optimizer = 'adam'   (Enter to apply)",
  });
  const filterErr = h("div", { "data-testid": "filter-error", class: "filter-error", hidden: true });
  const table = h("table", { "data-testid": "runs-table", class: "runs" });
  const status = h("p", { class: "muted" }, "Loading…");
  const more = h("button", { type: "button", hidden: true }, "More");

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

  async function load(append: boolean): Promise<void> {
    status.textContent = "Loading…";
    status.className = "muted";
    try {
      const page = await searchRuns(id, filter.value, orderBy(sort), append ? token : "");
      if (!alive) return;
      filterErr.hidden = true;
      filterErr.removeAttribute("data-column");
      runs = append ? runs.concat(page.runs ?? []) : page.runs ?? [];
      token = page.next_page_token ?? "";
      more.hidden = !token;
      status.textContent = runs.length === 0 ? "No runs match." : `${runs.length} runs`;
      draw();
    } catch (err) {
      if (!alive) return;
      status.textContent = "";
      if (!showFilterError(err)) {
        status.textContent = errorText(err);
        status.className = "error";
      }
    }
  }

  function draw(): void {
    for (const c of columnsOf(runs)) if (!columns.includes(c)) columns.push(c);
    clear(table);
    const head = h("tr", {}, ...columns.map((c) => {
      const mark = sort?.column === c ? (sort.descending ? " ▼" : " ▲") : "";
      return h("th", {
        "data-testid": `sort-${c}`, class: "sortable", title: "Sort by the server",
        "aria-sort": sort?.column === c ? (sort.descending ? "descending" : "ascending") : "none",
        onclick: () => {
          sort = nextSort(sort, c);
          void load(false);
        },
      }, c + mark);
    }));
    table.append(h("thead", {}, head), h("tbody", {}, ...runs.map((run) =>
      h("tr", { "data-testid": "run-row", "data-run-id": run.id }, ...columns.map((c) => {
        const value = formatValue(cellValue(run, c));
        return h("td", { class: c.startsWith("metrics.") ? "num" : "" },
          c === "name" ? h("a", { href: href({ page: "run", id: run.id }) }, value) : value);
      })))));
  }

  filter.addEventListener("keydown", (event) => {
    if (event.key === "Enter") void load(false);
  });
  more.addEventListener("click", () => void load(true));

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
  root.append(h("div", { class: "filter-box" }, filter, filterErr), status, table, more);

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
  };
}
