// The first screen after sign-in: every experiment the caller sees, and (for writers) a form
// to create one.

import { createExperiment, listExperiments, type Experiment } from "../api";
import { clear, errorText, h, type Dispose } from "../dom";
import { go, href } from "../router";
import { canWrite } from "../session";

export function experimentsPage(root: HTMLElement): Dispose {
  const list = h("ul", { class: "experiments" });
  const status = h("p", { class: "muted" }, "Loading…");
  const more = h("button", { type: "button", hidden: true }, "More");
  let token = "";

  const row = (e: Experiment) =>
    h("li", {},
      h("a", { "data-testid": "experiment", href: href({ page: "experiment", id: e.id }) }, e.name),
      h("span", { class: "muted" }, ` ${plural(e.run_count ?? 0, "run")} · ${e.owner ?? ""}`));

  async function load(): Promise<void> {
    try {
      const page = await listExperiments(token);
      const experiments = page.experiments ?? [];
      list.append(...experiments.map(row));
      token = page.next_page_token ?? "";
      more.hidden = !token;
      status.textContent = list.childElementCount === 0 ? "No experiments yet." : "";
    } catch (err) {
      status.textContent = errorText(err);
      status.className = "error";
    }
  }
  more.addEventListener("click", () => void load());

  root.append(h("h1", {}, "Experiments"));
  if (canWrite()) root.append(createForm());
  root.append(status, list, more);
  void load();
  return () => {};
}

function createForm(): HTMLElement {
  const name = h("input", { "data-testid": "experiment-name", placeholder: "new experiment name", required: true });
  const error = h("span", { class: "error" });
  const form = h("form", { class: "inline", "data-write": true },
    name, h("button", { type: "submit", "data-testid": "create-experiment", "data-write": true }, "Create"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(error);
    try {
      const created = await createExperiment(name.value.trim());
      go({ page: "experiment", id: created.id });
    } catch (err) {
      error.textContent = errorText(err);
    }
  });
  return form;
}

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;
