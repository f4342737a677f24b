"""The console's run comparison and its virtualized run table, in headless Chromium against a
`make run` stack.

Compare: runs picked with the run table's checkboxes open #/compare/<ids>: one chart per metric
with a line per run, the params-and-metrics table marking what differs (and hiding what does not
on request), and the best run per metric as CompareRuns decides it. Comparing only reads, so a
viewer does it too.

The virtualized table: an experiment of BULK_RUNS runs (10,000 unless NEURAL_CONSOLE_BULK_RUNS
says otherwise) keeps a bounded number of rows in the DOM, reaches its last run (by the server's
sort) by scrolling, and still sorts. The platform has no batch CreateRun, and the gateway limits
a user to 600 calls a minute, so these runs are made one CreateRun each over gRPC, many at once,
in a stack of this module's own whose rate limits give the bulk subject a quota of its own
(limits.yaml's `subjects`, meant for CI pipelines)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from neural.v1 import tracker_pb2, tracker_pb2_grpc
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from scripts.local_stack import admin_key, running_stack
from tests.web.conftest import ROOT, UI_TIMEOUT_MS, Console, Watched, post

pytestmark = pytest.mark.e2e

SUBJECT = "console-compare"
EXPERIMENT = "console-compare-experiment"
# name -> (params, loss at steps 0..LOSS_STEPS-1): "fast" ends lowest, "slow" highest
RUNS = {
    "compare-slow": ({"lr": "0.001", "optimizer": "adam"}, lambda s: 2.0 / (s + 1) + 0.5),
    "compare-fast": ({"lr": "0.1", "optimizer": "adam"}, lambda s: 1.0 / (s + 1)),
    "compare-mid": ({"lr": "0.01", "optimizer": "adam"}, lambda s: 1.5 / (s + 1) + 0.2),
}
LOSS_STEPS = 20

BULK_SUBJECT = "console-compare-bulk"
BULK_EXPERIMENT = "console-compare-10k"
BULK_RUNS = int(os.environ.get("NEURAL_CONSOLE_BULK_RUNS", "10000"))
BULK_PARALLEL = 32  # CreateRun calls in flight at once: SQLite writes one at a time anyway
BULK_TRIES = 5  # per run: UNAVAILABLE when authz did not answer in 0.5 s (a loaded machine)
BULK_QUOTA = BULK_RUNS * 2 + 10_000  # its calls a minute: the runs, then the browser's
DOM_ROWS_BOUND = 200


@dataclass
class Compared:
    console: Console
    user_key: str
    viewer_key: str
    experiment_id: str
    run_ids: dict[str, str]  # name -> id


@pytest.fixture(scope="module")
def compared(console: Console) -> Compared:
    """An experiment of three runs that differ in `lr` only, each with a loss curve."""
    keys = console.keys(SUBJECT, "USER", "VIEWER")
    run_ids: dict[str, str] = {}
    with console.api(keys["USER"]) as user:
        experiment = post(user, "/v1/experiments", {"name": EXPERIMENT})
        for name, (params, loss) in RUNS.items():
            run = post(user, f"/v1/experiments/{experiment['id']}/runs", {"name": name})
            post(user, f"/v1/runs/{run['id']}:logParams", {"params": params})
            points = [
                {"key": "loss", "value": loss(step), "step": str(step)}
                for step in range(LOSS_STEPS)
            ]
            post(user, f"/v1/runs/{run['id']}:logMetrics", {"metrics": points})
            run_ids[name] = run["id"]
    return Compared(console, keys["USER"], keys["VIEWER"], experiment["id"], run_ids)


def _open_experiment(page: Page, url: str, experiment_id: str) -> None:
    page.goto(f"{url}/#/experiments/{experiment_id}")
    expect(page.locator("table[data-testid=runs-table]")).to_be_visible()


def _compare(page: Page, compared: Compared, names: list[str]) -> None:
    """Picks `names` in the run table and opens their comparison."""
    _open_experiment(page, compared.console.url, compared.experiment_id)
    expect(page.locator("tr[data-testid=run-row]")).to_have_count(len(RUNS))
    button = page.locator("button[data-testid=compare-runs]")
    expect(button).to_be_disabled()
    for i, name in enumerate(names):
        page.locator(
            f"input[data-testid=run-select][data-run-id='{compared.run_ids[name]}']"
        ).check()
        if i == 0:
            expect(button).to_be_disabled()  # one run is no comparison
    expect(button).to_be_enabled()
    button.click()
    page.wait_for_url("**/#/compare/**")
    ids = page.url.split("#/compare/", 1)[1].split(",")
    assert sorted(ids) == sorted(compared.run_ids[n] for n in names)


def _check_comparison(page: Page, compared: Compared) -> None:
    """What comparing compare-slow with compare-fast shows."""
    chart = page.locator("[data-testid=compare-chart][data-key=loss]")
    expect(chart).to_have_attribute("data-series", "2")
    # the legend names both runs
    expect(chart).to_contain_text("compare-slow")
    expect(chart).to_contain_text("compare-fast")

    table = page.locator("[data-testid=compare-table]")
    lr = table.locator("tr[data-testid=diff-row][data-key='params.lr']")
    optimizer = table.locator("tr[data-testid=diff-row][data-key='params.optimizer']")
    expect(lr).to_have_attribute("data-differs", "true")
    expect(lr).to_contain_text("0.001")
    expect(lr).to_contain_text("0.1")
    expect(optimizer).to_have_attribute("data-differs", "false")
    expect(table.locator("tr[data-testid=diff-row][data-key='metrics.loss']")).to_have_attribute(
        "data-differs", "true"
    )

    best = page.locator("[data-testid=best-run][data-key=loss]")
    expect(best).to_have_attribute("data-run-id", compared.run_ids["compare-fast"])
    expect(best).to_contain_text("compare-fast")
    expect(best).to_contain_text("lower is better")
    fast_cell = table.locator("tr[data-key='metrics.loss'] td[data-best=true]")
    expect(fast_cell).to_have_count(1)

    # only the differences: the optimizer (the same in both) goes, lr stays
    page.locator("input[data-testid=only-differences]").check()
    expect(optimizer).to_be_hidden()
    expect(lr).to_be_visible()
    page.locator("input[data-testid=only-differences]").uncheck()
    expect(optimizer).to_be_visible()


def test_a_user_picks_two_runs_and_compares_them(compared: Compared, watched: Watched) -> None:
    page = watched.page
    watched.sign_in(compared.console, compared.user_key, SUBJECT, "user")
    _compare(page, compared, ["compare-slow", "compare-fast"])
    _check_comparison(page, compared)
    watched.screenshot("compare")
    assert not watched.errors, watched.errors


def test_a_viewer_compares_too(compared: Compared, watched: Watched) -> None:
    page = watched.page
    watched.sign_in(compared.console, compared.viewer_key, SUBJECT, "viewer")
    _compare(page, compared, ["compare-slow", "compare-fast"])
    _check_comparison(page, compared)
    assert page.locator("[data-write]").count() == 0, page.content()
    watched.screenshot("compare-viewer")
    assert not watched.errors, watched.errors


# ---- the run table of BULK_RUNS runs ------------------------------------------------------


@dataclass
class Bulk:
    console: Console
    key: str
    experiment_id: str
    seconds: float  # what making the runs took


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bulk]:
    folder = tmp_path_factory.mktemp("console-bulk-stack")
    limits = folder / "limits.yaml"
    config = (ROOT / "gateway" / "ratelimit" / "limits.yaml").read_text()
    assert "subjects: {}" in config, "limits.yaml changed: give the bulk subject its quota anew"
    limits.write_text(
        config.replace(
            "subjects: {}",
            f"subjects:\n  {BULK_SUBJECT}: {{requests: {BULK_QUOTA}, window_seconds: 60}}",
        )
    )
    with running_stack(folder, {"NEURAL_RATELIMIT_CONFIG": str(limits)}) as env:
        url = f"http://127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
        console = Console(url, admin_key(env, "console-bulk-tests"), env)
        key = console.keys(BULK_SUBJECT, "USER")["USER"]
        started = time.monotonic()
        # on a thread of its own: Playwright's sync API may hold this thread's event loop
        address = f"127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
        with ThreadPoolExecutor(1) as thread:
            experiment_id = thread.submit(asyncio.run, _make_runs(address, key)).result()
        seconds = time.monotonic() - started
        print(f"\n{BULK_RUNS} runs made in {seconds:.1f} s")
        yield Bulk(console, key, experiment_id, seconds)


async def _make_runs(address: str, key: str) -> str:
    """BULK_RUNS runs named bulk-00000... in a new experiment, BULK_PARALLEL calls at once."""
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tracker_pb2_grpc.TrackerServiceStub(channel)
        experiment = await stub.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name=BULK_EXPERIMENT)
            ),
            metadata=metadata,
            timeout=60,
        )
        # made in name order, so the server's default order (newest first) is close to the
        # name's descending order and the ascending sort below has to change the table
        queue = iter(range(BULK_RUNS))

        async def create(i: int) -> None:
            request = tracker_pb2.CreateRunRequest(
                experiment_id=experiment.id, run=tracker_pb2.Run(name=_bulk_name(i))
            )
            for attempt in range(BULK_TRIES):
                try:
                    await stub.CreateRun(request, metadata=metadata, timeout=60)
                    return
                except grpc.aio.AioRpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == BULK_TRIES - 1:
                        raise
                    await asyncio.sleep(0.2 * 2**attempt)

        async def worker() -> None:
            for i in queue:  # one iterator shared by the workers: each index taken once
                await create(i)

        await asyncio.gather(*(worker() for _ in range(BULK_PARALLEL)))
        return experiment.id


def _bulk_name(i: int) -> str:
    return f"bulk-{i:05d}"


SCROLLED_TO_THE_TOP = "() => document.querySelector('[data-testid=runs-scroll]').scrollTop === 0"


def _rows_in_dom(page: Page) -> int:
    return page.locator("tr[data-testid=run-row]").count()


def _scroll_to_the_end(page: Page) -> None:
    """Scrolls the table's box to its bottom until every page is loaded (each scroll near the
    end fetches the next one), checking on the way that the DOM never holds many rows."""
    box = page.locator("[data-testid=runs-scroll]")
    table = page.locator("table[data-testid=runs-table]")
    status = page.locator("[data-testid=runs-status]")
    deadline = time.monotonic() + 300
    while table.get_attribute("data-complete") != "true":
        loaded = table.get_attribute("data-loaded")
        assert time.monotonic() < deadline, f"stuck at {loaded} runs: {status.inner_text()}"
        box.evaluate("el => { el.scrollTop = el.scrollHeight; }")
        # the next page comes, or this one was the last
        try:
            page.wait_for_function(
                "([n]) => { const t = document.querySelector('[data-testid=runs-table]');"
                " return t.dataset.loaded !== n || t.dataset.complete === 'true'; }",
                arg=[loaded],
                timeout=UI_TIMEOUT_MS,
            )
        except PlaywrightTimeout:
            raise AssertionError(f"no page after {loaded} runs: {status.inner_text()}") from None
        assert _rows_in_dom(page) < DOM_ROWS_BOUND
    assert table.get_attribute("data-loaded") == str(BULK_RUNS), status.inner_text()
    box.evaluate("el => { el.scrollTop = el.scrollHeight; }")


def _last_row_is(page: Page, name: str) -> None:
    last = page.locator("tr[data-testid=run-row]").last
    expect(last).to_contain_text(name)
    # and it is the bottom of the box: nothing rendered or standing in below it (waited for:
    # the rows drawn after the scroll may settle the spacers' heights a frame later)
    page.wait_for_function(
        "() => { const el = document.querySelector('[data-testid=runs-scroll]');"
        " return el.scrollTop + el.clientHeight >= el.scrollHeight - 1; }"
    )


def test_a_table_of_many_runs_keeps_few_rows_in_the_dom_and_still_sorts(
    bulk: Bulk, watched: Watched
) -> None:
    page = watched.page
    watched.sign_in(bulk.console, bulk.key, BULK_SUBJECT, "user")
    _open_experiment(page, bulk.console.url, bulk.experiment_id)
    table = page.locator("table[data-testid=runs-table]")
    rows = page.locator("tr[data-testid=run-row]")
    expect(rows.first).to_be_visible()
    assert 0 < _rows_in_dom(page) < DOM_ROWS_BOUND
    # the server's default order, newest first, does not start with the first name
    expect(table).to_have_attribute("aria-busy", "false")
    expect(rows.first).not_to_contain_text(_bulk_name(0))

    # by name, ascending (the server sorts): the top is the first run, the bottom the last
    page.locator("th[data-testid=sort-name]").click()
    expect(table.locator("th[data-testid=sort-name]")).to_have_attribute("aria-sort", "ascending")
    # the sorted page is drawn: until then the table shows the old order, and a scroll would be
    # undone by the sorted page's return to the top
    expect(table).to_have_attribute("aria-busy", "false")
    expect(rows.first).to_contain_text(_bulk_name(0))
    _scroll_to_the_end(page)
    _last_row_is(page, _bulk_name(BULK_RUNS - 1))
    assert _rows_in_dom(page) < DOM_ROWS_BOUND
    watched.screenshot("runs-virtualized")

    # descending: back at the top with the last run first, and the first run at the bottom
    page.locator("th[data-testid=sort-name]").click()
    expect(table.locator("th[data-testid=sort-name]")).to_have_attribute("aria-sort", "descending")
    expect(table).to_have_attribute("aria-busy", "false")
    expect(rows.first).to_contain_text(_bulk_name(BULK_RUNS - 1))
    page.wait_for_function(SCROLLED_TO_THE_TOP)
    _scroll_to_the_end(page)
    _last_row_is(page, _bulk_name(0))
    assert _rows_in_dom(page) < DOM_ROWS_BOUND

    # the runs can be picked for comparison from anywhere in the table
    page.locator("input[data-testid=run-select]").last.check()
    page.locator("input[data-testid=run-select]").nth(-2).check()
    expect(page.locator("button[data-testid=compare-runs]")).to_be_enabled()
    assert not watched.errors, watched.errors
