// The workers that take jobs off the queues (ListWorkers): host, process, queues, the jobs they
// run now and their last heartbeat, re-read every few seconds while the page is open.
//
// ListWorkers is for operators: the trainer lets admins alone call it. Other roles are told so
// rather than shown the refusal (which the browser would also log as a failed request).

import { clear, errorText, h, type Dispose } from "../dom";
import { ago, formatTime } from "../jobs";
import { listWorkers, type Worker } from "../jobs_api";
import { href } from "../router";
import { currentPrincipal } from "../session";

const REFRESH_MS = 5000;

export function workersPage(root: HTMLElement): Dispose {
  root.append(h("h1", {}, "Workers"));
  if (currentPrincipal()?.role !== "ROLE_ADMIN") {
    root.append(h("p", { "data-testid": "workers-admin-only", class: "muted" },
      "Listing the workers needs the admin role (ListWorkers is for operators). ",
      "Your jobs' states are on the ", h("a", { href: href({ page: "jobs" }) }, "jobs page"), "."));
    return () => {};
  }

  let alive = true;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const includeDead = h("input", { type: "checkbox", "data-testid": "include-dead" });
  const status = h("p", { class: "muted", "data-testid": "workers-status" }, "Loading…");
  const table = h("table", { "data-testid": "workers-table", class: "runs" });

  root.append(h("label", { class: "inline" }, includeDead, "Show dead workers too (their jobs were handed to others)"),
    status, table);

  async function load(): Promise<void> {
    clearTimeout(timer);
    try {
      const workers = await listWorkers(includeDead.checked);
      if (!alive) return;
      draw(workers);
      status.className = "muted";
      status.textContent = `${workers.length} workers · updated ${formatTime(new Date().toISOString())}`;
    } catch (err) {
      if (!alive) return;
      status.className = "error";
      status.textContent = errorText(err);
    }
    if (alive) timer = setTimeout(() => void load(), REFRESH_MS);
  }

  function draw(workers: Worker[]): void {
    clear(table);
    const now = Date.now();
    // live ones first, then by host and process
    const sorted = [...workers].sort((a, b) =>
      Number(b.alive) - Number(a.alive) || a.hostname.localeCompare(b.hostname) || a.pid - b.pid);
    table.append(
      h("thead", {}, h("tr", {}, ...["Host", "PID", "State", "Queues", "Running", "Last heartbeat", "Worker id"].map((c) => h("th", {}, c)))),
      h("tbody", {}, ...sorted.map((w) => {
        const jobs = w.in_flight_job_ids ?? [];
        return h("tr", { "data-testid": "worker-row", "data-worker-id": w.id, "data-alive": String(Boolean(w.alive)) },
          h("td", {}, w.hostname),
          h("td", { class: "num" }, String(w.pid)),
          h("td", {}, h("span", { class: `status ${w.alive ? "alive" : "dead"}` }, w.alive ? "ALIVE" : "DEAD")),
          h("td", {}, (w.queues ?? []).join(", ")),
          h("td", {}, jobs.length === 0 ? h("span", { class: "muted" }, "idle") : null,
            ...jobs.flatMap((id, i) => [i ? ", " : "", h("a", { href: href({ page: "job", id }), class: "mono", title: id }, id.slice(0, 8))])),
          h("td", { title: formatTime(w.last_heartbeat_time) }, ago(w.last_heartbeat_time, now)),
          h("td", { class: "mono muted" }, w.id));
      })),
    );
  }

  includeDead.addEventListener("change", () => void load());
  void load();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
