"""The web console's run page against MLflow, in one run: a chart of a long metric, drawn.

A `make run` stack (scripts/run_stack.py: Envoy serving web/dist, every service, a training
worker) starts on free ports in a folder of its own; a run gets a metric of --points points
(default 100,000: `LogMetrics` batches of 1,000 through the gateway) and is finished. The same
series goes into a local MLflow server (`.venv-bench`, `make bench-deps`) through its REST API.

Then, in Debian's Chromium (headless, driven by Playwright, as the browser tests launch it),
signed in to the console, the run page is opened --repeat times, each a full navigation (from
about:blank: a new document, so the timing starts at the navigation; the sign-in page loaded
the app's scripts once before, so the browser's cache holds them): the time from the
navigation's start to the chart drawn with every point of its history (a MutationObserver
installed before the page's scripts sees the chart's `data-points` reach its final count; the
time is taken at the next animation frame, uPlot having drawn in a microtask of the frame that
set the count), and the bytes of every /v1 response the page read (the Resource Timing API's
body sizes: whoami, the run's watch, which ends after its first event as the run is finished,
the downsampled history and the artifacts).

Baselines, in the same run: the same series through MLflow's REST API (`metrics/get-history`,
the full paged JSON as `MlflowClient.get_metric_history` reads it, 25,000 points a page: its
bytes and time, read min(--repeat, 3) times as one read takes seconds), and MLflow's own UI
drawing the same metric's chart in the same browser, --repeat navigations to the run's "Model
metrics" tab after its home page was opened once: the time to the chart's line drawn (Plotly's
SVG path, polled every frame) and the bytes of the /ajax-api responses answered by then (the
page polls while open). Each chart's sample is read again to count its points and the series'
spikes among them (one every 10,000 steps): what the chart shows of the series.

Targets (issue 18): the chart drawn in under 500 ms on this machine; at least 10x fewer bytes
than MLflow's JSON for the same series.

    .venv/bin/python bench/web.py [--points N] [--repeat N]
    .venv/bin/python bench/web.py --screenshot docs/images/console-run.png

--screenshot instead trains a small model through the REST API (the DSL's digits network on
scikit-learn's digits) and saves its run page (1280 wide, the whole page), curves drawn, to the
path given.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (ROOT on the path)
from scripts.local_stack import create_key, running_stack  # noqa: E402

VIEWPORT = {"width": 1280, "height": 900}
KEY = "loss"
BATCH = 1000  # points per LogMetrics / log-batch call: both APIs' limit
MLFLOW_PAGE = 25_000  # get-history's page: MlflowClient.get_metric_history's
MLFLOW_READS = 3  # get-history reads timed at most: one takes tens of seconds at 100k points
SPIKE = 3.0  # the series' spikes' value (see series())
UI_TIMEOUT_MS = 120_000
TARGET_MS = 500
TARGET_BYTES_RATIO = 10

# Before the page's scripts: every change of a chart's data-points, timed. The time is taken
# at the frame after the change: uPlot draws in a microtask of the frame that set the count,
# so by the next frame the canvas holds the points.
OBSERVE = """
window.__charts = [];
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target;
    if (el.getAttribute("data-testid") !== "chart") continue;
    const entry = { key: el.getAttribute("data-key"), set: performance.now(), drawn: null,
                    points: Number(el.getAttribute("data-points")) };
    window.__charts.push(entry);
    requestAnimationFrame(() => { entry.drawn = performance.now(); });
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-points"] });
"""

# MLflow's UI (Plotly, SVG): the chart's line holds its points; polled every frame.
MLFLOW_DRAWN = """
() => {
  const line = document.querySelector(".js-plotly-plot .scatterlayer .trace path.js-line");
  if ((line?.getAttribute("d") ?? "").length < 100) return false;
  window.__mlflowDrawn ??= performance.now();
  return true;
}
"""

# The /v1 (or MLflow's /ajax-api) responses the page read, from the Resource Timing API.
RESOURCES = """
(prefix) => performance.getEntriesByType("resource")
  .filter((e) => new URL(e.name).pathname.startsWith(prefix))
  .map((e) => ({ url: e.name, body: e.encodedBodySize, transfer: e.transferSize,
                 start: e.startTime, end: e.responseEnd }))
"""


def series(points: int) -> Iterator[tuple[int, float]]:
    """A falling, noisy loss with a spike every 10,000 steps (what downsampling must keep)."""
    for i in range(points):
        value = 2.0 / (1 + i / 2000) + 0.05 * ((i * 7919) % 101) / 101
        yield i, (SPIKE if i % 10_000 == 9_999 else value)


# --- the stack ---------------------------------------------------------------------------


def post(api: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    response = api.post(path, json=body)
    if response.status_code != 200:
        raise SystemExit(f"{path}: {response.status_code} {response.text}")
    return response.json()


@dataclass
class Stack:
    url: str
    key: str
    env: dict[str, str]

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60
        )


@contextlib.contextmanager
def stack(subject: str) -> Iterator[Stack]:
    folder = Path(tempfile.mkdtemp(prefix="neural-bench-web-"))
    try:
        with running_stack(folder) as env:
            url = f"http://127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
            yield Stack(url, create_key(env, subject, "user"), env)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- the browser ---------------------------------------------------------------------------


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of Debian's Chromium (1280x900) that fails loudly on the app's errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(f"page error at {page.url}: {e}"))
            page.on(
                "console",
                lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None,
            )
            page.errors = errors  # type: ignore[attr-defined]
            yield page
        finally:
            browser.close()


def sign_in(page: Any, s: Stack) -> None:
    page.goto(f"{s.url}/")
    page.locator("input[data-testid=api-key]").fill(s.key)
    page.locator("button[data-testid=sign-in]").click()
    page.locator("[data-testid=whoami]").wait_for()


# --- ours ----------------------------------------------------------------------------------


def load_ours(s: Stack, points: int) -> tuple[str, float]:
    """A finished run holding the series; (its id, seconds the load took)."""
    with s.api() as api:
        experiment = post(api, "/v1/experiments", {"name": f"bench-web-{time.time_ns()}"})
        run = post(api, f"/v1/experiments/{experiment['id']}/runs", {"name": "long-series"})
        pts = list(series(points))
        t0 = time.perf_counter()
        for start in range(0, points, BATCH):
            batch = [
                {"key": KEY, "value": v, "step": str(i)} for i, v in pts[start : start + BATCH]
            ]
            post(api, f"/v1/runs/{run['id']}:logMetrics", {"metrics": batch})
        took = time.perf_counter() - t0
        response = api.patch(f"/v1/runs/{run['id']}", json={"status": "RUN_STATUS_FINISHED"})
        if response.status_code != 200:
            raise SystemExit(f"finishing the run: {response.status_code} {response.text}")
    return run["id"], took


def draw_ours(page: Any, s: Stack, run_id: str) -> dict[str, Any]:
    """One full navigation to the run page: ms to the chart drawn, the /v1 bytes read."""
    page.goto("about:blank")
    page.goto(f"{s.url}/#/runs/{run_id}")
    chart = page.locator(f"[data-testid=chart][data-key='{KEY}']")
    chart.wait_for()
    page.wait_for_load_state("networkidle")  # every call answered, the watch ended (finished)
    page.wait_for_function(
        "(key) => window.__charts.some((c) => c.key === key && c.points > 0 && c.drawn !== null)",
        arg=KEY,
    )
    final = int(chart.get_attribute("data-points") or 0)
    entries = page.evaluate("window.__charts")
    drawn = next(e["drawn"] for e in entries if e["key"] == KEY and e["points"] == final)
    resources = page.evaluate(RESOURCES, "/v1/")
    history = [r for r in resources if "/metrics/" in r["url"]]
    return {
        "ms": drawn,
        # where the time went: the app's scripts run, the history asked for and answered
        "loaded": page.evaluate(
            "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
        ),
        "asked": min(r["start"] for r in history),
        "answered": max(r["end"] for r in history),
        "points": final,
        "bytes": sum(r["body"] for r in resources),
        "transfer": sum(r["transfer"] for r in resources),
        "history_bytes": sum(r["body"] for r in history),
        "history_urls": [r["url"] for r in history],
        "requests": len(resources),
    }


# --- MLflow --------------------------------------------------------------------------------


def load_mlflow(api: httpx.Client, points: int) -> tuple[str, str, float]:
    """A finished MLflow run holding the same series; (experiment id, run id, seconds)."""
    base = "/api/2.0/mlflow"
    experiment = post(api, f"{base}/experiments/create", {"name": f"bench-web-{time.time_ns()}"})
    now = int(time.time() * 1000)
    run = post(
        api,
        f"{base}/runs/create",
        {"experiment_id": experiment["experiment_id"], "start_time": now, "run_name": "long"},
    )["run"]["info"]
    pts = list(series(points))
    t0 = time.perf_counter()
    for start in range(0, points, BATCH):
        batch = [
            {"key": KEY, "value": v, "timestamp": now, "step": i}
            for i, v in pts[start : start + BATCH]
        ]
        post(api, f"{base}/runs/log-batch", {"run_id": run["run_id"], "metrics": batch})
    took = time.perf_counter() - t0
    post(api, f"{base}/runs/update", {"run_id": run["run_id"], "status": "FINISHED"})
    return experiment["experiment_id"], run["run_id"], took


def mlflow_history(api: httpx.Client, run_id: str) -> dict[str, Any]:
    """The whole series through get-history, page by page: points, bytes (body as received
    and decoded) and seconds."""
    got = wire = body = 0
    token = ""
    t0 = time.perf_counter()
    while True:
        params = {"run_id": run_id, "metric_key": KEY, "max_results": str(MLFLOW_PAGE)}
        if token:
            params["page_token"] = token
        response = api.get("/api/2.0/mlflow/metrics/get-history", params=params)
        response.raise_for_status()
        page = response.json()
        got += len(page.get("metrics", []))
        wire += response.num_bytes_downloaded
        body += len(response.content)
        token = page.get("next_page_token", "")
        if not token:
            break
    return {"s": time.perf_counter() - t0, "points": got, "bytes": wire, "decoded": body}


def mlflow_ui(page: Any, uri: str, experiment_id: str, run_id: str) -> dict[str, Any]:
    """MLflow's UI drawing the same metric: one full navigation to the run's metric charts;
    ms to the first drawn line of the chart and the bytes of its /ajax-api responses."""
    page.goto("about:blank")
    page.goto(f"{uri}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")
    page.wait_for_function(MLFLOW_DRAWN, timeout=UI_TIMEOUT_MS)
    drawn = page.evaluate("window.__mlflowDrawn")
    # what it read to draw: its page polls on (auto-refresh), so never idle; later reads are
    # left out
    resources = [r for r in page.evaluate(RESOURCES, "/ajax-api/") if r["end"] <= drawn]
    history = [r for r in resources if "/metrics/get-history" in r["url"]]
    return {
        "ms": drawn,
        "bytes": sum(r["body"] for r in resources),
        "transfer": sum(r["transfer"] for r in resources),
        "history_bytes": sum(r["body"] for r in history),
        "history_urls": [r["url"] for r in history],
        "requests": len(resources),
    }


def sampled(client: httpx.Client, urls: list[str]) -> tuple[int, int]:
    """(points, spikes) in the series samples a page read (its history URLs, read again):
    what its chart drew."""
    points = spikes = 0
    for url in urls:
        response = client.get(url)
        response.raise_for_status()
        body = response.json()
        values = body.get("values") or [m["value"] for m in body.get("metrics", [])]
        points += len(values)
        spikes += sum(1 for v in values if v == SPIKE)
    return points, spikes


# --- the screenshot ------------------------------------------------------------------------

PROGRAM = """
network DigitsConsole {
  input: (64,)
  layers:
    Dense(64, "relu")
    Dropout(0.2)
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.002)
  train { epochs: 30 batch_size: 32 validation_split: 0.2 }
}
"""


def screenshot(path: Path) -> int:
    """Trains the digits network through the REST API, then saves its run page."""
    with stack("console-screenshot") as s, s.api() as api:
        job = post(
            api,
            "/v1/training-jobs",
            {
                "source": PROGRAM,
                "dataset": {"builtin": "BUILTIN_DATASET_DIGITS"},
                "experiment": "digits",
            },
        )
        print(f"training job {job['id']} submitted", flush=True)
        deadline = time.monotonic() + 600
        while job["state"] not in (
            "JOB_STATE_SUCCEEDED",
            "JOB_STATE_FAILED",
            "JOB_STATE_CANCELLED",
        ):
            if time.monotonic() > deadline:
                raise SystemExit("the training did not end within 600 s")
            time.sleep(1)
            response = api.get(f"/v1/training-jobs/{job['id']}")
            response.raise_for_status()
            job = response.json()
        if job["state"] != "JOB_STATE_SUCCEEDED":
            raise SystemExit(f"the training ended {job['state']}: {job.get('error')}")
        run_id = job["details"]["run_id"]
        keys = {m["key"] for m in api.get(f"/v1/runs/{run_id}").json()["latest_metrics"]}
        print(f"run {run_id}: metrics {', '.join(sorted(keys))}", flush=True)
        with browser_page() as page:
            sign_in(page, s)
            page.goto(f"{s.url}/#/runs/{run_id}")
            for key in keys:
                page.wait_for_function(
                    "(key) => Number(document.querySelector("
                    "`[data-testid=chart][data-key='${key}']`)?.getAttribute('data-points')) > 1",
                    arg=key,
                )
            page.locator("a[data-testid=artifact]").first.wait_for()
            page.wait_for_load_state("networkidle")
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)  # every chart and the artifacts
            if page.errors:
                raise SystemExit(f"the page logged errors: {page.errors}")
    print(f"saved {path}")
    return 0


# --- the benchmark -------------------------------------------------------------------------


@dataclass
class Results:
    points: int
    ours: list[dict[str, Any]]
    ours_sample: tuple[int, int]
    history: list[dict[str, Any]]
    ui: list[dict[str, Any]]
    ui_sample: tuple[int, int]
    ui_skipped: str


def bench(points: int, repeat: int) -> int:
    if not (ROOT / "web" / "dist" / "index.html").is_file():
        raise SystemExit("the web console is not built: run `make setup` (it builds web/dist)")
    ml_ok = mlflow_server.installed()
    history: list[dict[str, Any]] = []
    ui: list[dict[str, Any]] = []
    ui_sample = (0, 0)
    ui_skipped = "" if ml_ok else "MLflow is not installed in .venv-bench: `make bench-deps`"
    with contextlib.ExitStack() as cleanup:
        s = cleanup.enter_context(stack("bench-web"))
        run_id, load_s = load_ours(s, points)
        print(f"ours: {points:,} points logged in {load_s:.1f} s ({BATCH} a LogMetrics call)")
        if ml_ok:
            uri = cleanup.enter_context(mlflow_server.mlflow_server())
            ml = cleanup.enter_context(httpx.Client(base_url=uri, timeout=600))
            ml_exp, ml_run, ml_load = load_mlflow(ml, points)
            print(f"mlflow: {points:,} points logged in {ml_load:.1f} s ({BATCH} a log-batch call)")
        else:
            print(f"mlflow: no baseline ({ui_skipped})")
        page = cleanup.enter_context(browser_page())
        page.add_init_script(OBSERVE)
        sign_in(page, s)
        ours = [draw_ours(page, s, run_id) for _ in range(repeat)]
        if page.errors:
            raise SystemExit(f"the console logged errors: {page.errors}")
        with s.api() as api:
            ours_sample = sampled(api, ours[-1]["history_urls"])
        if ml_ok:
            history = [mlflow_history(ml, ml_run) for _ in range(min(repeat, MLFLOW_READS))]
            try:
                page.goto(f"{uri}/")  # its scripts in the cache, as the sign-in left ours
                ui = [mlflow_ui(page, uri, ml_exp, ml_run) for _ in range(repeat)]
                ui_sample = sampled(ml, ui[-1]["history_urls"])
            except Exception as exc:  # the second baseline is optional: say why it is missing
                ui, ui_skipped = [], f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    report(Results(points, ours, ours_sample, history, ui, ui_sample, ui_skipped))
    return 0


def report(r: Results) -> None:
    med = statistics.median
    spikes = r.points // 10_000
    ms = med(x["ms"] for x in r.ours)
    body = r.ours[-1]["bytes"]
    print(
        f"\nthe chart of a {r.points:,}-point metric ({spikes} spikes), "
        f"{len(r.ours)} navigations each:"
    )
    print(f"  {'':42s} {'ms':>7s} {'first':>7s} {'API bytes':>11s} {'calls':>5s} drawn")

    def row(name: str, ms: float, first: float, body: int, calls: int, drawn: str) -> None:
        print(f"  {name:42s} {ms:7.0f} {first:7.0f} {body:11,} {calls:5d} {drawn}")

    row(
        "console: run page, chart drawn",
        ms,
        r.ours[0]["ms"],
        body,
        r.ours[-1]["requests"],
        f"{r.ours_sample[0]} pts, {r.ours_sample[1]}/{spikes} spk",
    )
    print(f"  {'  of which the history':42s} {'':7s} {'':7s} {r.ours[-1]['history_bytes']:11,}")
    if r.history:
        h = r.history[-1]
        h_ms = med(x["s"] for x in r.history) * 1e3
        row(
            f"mlflow: REST get-history ({len(r.history)} reads)",
            h_ms,
            r.history[0]["s"] * 1e3,
            h["bytes"],
            -(-h["points"] // MLFLOW_PAGE),
            f"{h['points']:,} pts",
        )
    if r.ui:
        row(
            "mlflow UI: run's metric chart drawn",
            med(x["ms"] for x in r.ui),
            r.ui[0]["ms"],
            r.ui[-1]["bytes"],
            r.ui[-1]["requests"],
            f"{r.ui_sample[0]} pts, {r.ui_sample[1]}/{spikes} spk",
        )
        print(f"  {'  of which the history':42s} {'':7s} {'':7s} {r.ui[-1]['history_bytes']:11,}")
    else:
        print(f"  mlflow UI: skipped ({r.ui_skipped})")
    print(
        "  (ms: the median to the chart drawn, get-history's to its last page; first: the first "
        "navigation\n   or read; drawn: the points of the chart, and the spikes among them)"
    )
    loaded, asked = med(x["loaded"] for x in r.ours), med(x["asked"] for x in r.ours)
    print(
        f"  the console's time line (median ms): scripts run {loaded:.0f}, "
        f"history asked {asked:.0f}, answered {med(x['answered'] for x in r.ours):.0f}, "
        f"chart drawn {ms:.0f}"
    )
    verdict = "met" if ms < TARGET_MS else "NOT met"
    print(f"  console chart drawn in {ms:.0f} ms (target < {TARGET_MS} ms): {verdict}")
    if r.history:
        ratio = r.history[-1]["bytes"] / body
        verdict = "met" if ratio >= TARGET_BYTES_RATIO else "NOT met"
        print(
            f"  mlflow get-history's bytes / the console page's API bytes: {ratio:,.0f}x "
            f"(target >= {TARGET_BYTES_RATIO}x): {verdict}"
        )
        print(
            f"  mlflow get-history's time / the console page's time to a drawn chart: "
            f"{h_ms / ms:,.1f}x"
        )
    if r.ui:
        u_ms = med(x["ms"] for x in r.ui)
        print(
            f"  mlflow UI / console: {u_ms / ms:.1f}x the time to a drawn chart, "
            f"{r.ui[-1]['bytes'] / body:.1f}x the API bytes"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000, help="the metric's points")
    ap.add_argument("--repeat", type=int, default=10, help="navigations timed, each side")
    ap.add_argument(
        "--screenshot",
        type=Path,
        metavar="PATH",
        help="instead: train a small model and save its run page as a PNG at PATH",
    )
    args = ap.parse_args()
    if args.screenshot:
        return screenshot(args.screenshot)
    return bench(args.points, args.repeat)


if __name__ == "__main__":
    sys.exit(main())
