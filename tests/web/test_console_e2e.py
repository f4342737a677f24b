"""The web console (web/, served by Envoy at /) in headless Chromium (Debian's, driven by
Playwright) against a `make run` stack: sign in with a key, the experiments list, an
experiment's run table, a run page whose chart grows while the run logs, and a viewer's key that
shows nothing that writes. Selectors are the DOM contract of the console (data-testid and
data-write attributes). Every page fails the test on a console error or an uncaught exception,
and is saved as a screenshot in NEURAL_TEST_ARTIFACTS (default tests/web/artifacts/)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.make_run import admin_key, running_stack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DIST_INDEX = ROOT / "web" / "dist" / "index.html"
# Both keys name the same subject: a non-admin sees the rows its subject owns, so the viewer
# reads what the user wrote.
SUBJECT = "console-e2e"
EXPERIMENT = "console-e2e-experiment"
RUN = "console-e2e-run"
FIRST_POINTS = 5
ARTIFACT = "notes/summary.txt"
ARTIFACT_BYTES = b"console e2e: an artifact to download\n"
UI_TIMEOUT_MS = 30_000


def _artifacts() -> Path:
    folder = Path(os.environ.get("NEURAL_TEST_ARTIFACTS") or ROOT / "tests" / "web" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Platform:
    url: str
    user_key: str
    viewer_key: str
    experiment_id: str
    run_id: str
    next_step: int = FIRST_POINTS

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=15
        )

    def log_loss(self, count: int) -> None:
        points = [
            {"key": "loss", "value": 1.0 / (step + 1), "step": str(step)}
            for step in range(self.next_step, self.next_step + count)
        ]
        with self.api(self.user_key) as api:
            response = api.post(f"/v1/runs/{self.run_id}:logMetrics", json={"metrics": points})
        assert response.status_code == 200, response.text
        self.next_step += count


def _post(api: httpx.Client, path: str, body: Any) -> dict[str, Any]:
    response = api.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A `make run` stack with a user's and a viewer's key (made through the REST API with an
    admin key), and one experiment with a run that has params, tags and a first few points."""
    if not DIST_INDEX.is_file():
        pytest.fail("the web console is not built: run `make setup` (it builds web/dist)")
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make setup installs it")
    folder = tmp_path_factory.mktemp("stack")
    with running_stack(folder) as env:
        url = f"http://127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {admin_key(env)}"}, timeout=15
        ) as admin:
            keys = {
                role: _post(admin, "/v1/api-keys", {"name": SUBJECT, "role": f"ROLE_{role}"})["key"]
                for role in ("USER", "VIEWER")
            }
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {keys['USER']}"}, timeout=15
        ) as user:
            experiment = _post(user, "/v1/experiments", {"name": EXPERIMENT})
            run = _post(user, f"/v1/experiments/{experiment['id']}/runs", {"name": RUN})
            _post(user, f"/v1/runs/{run['id']}:logParams", {"params": {"lr": "0.01"}})
            _post(user, f"/v1/runs/{run['id']}:setTags", {"tags": {"purpose": "e2e"}})
            # a client stream over REST: a JSON array of its messages, here one chunk
            chunk = {
                "data": base64.b64encode(ARTIFACT_BYTES).decode(),
                "offset": "0",
                "name": ARTIFACT.rsplit("/", 1)[-1],
                "total_size": str(len(ARTIFACT_BYTES)),
                "sha256": hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
            }
            _post(
                user,
                "/v1/runs:uploadArtifact",
                [{"run_id": run["id"], "path": ARTIFACT, "chunk": chunk}],
            )
        platform = Platform(url, keys["USER"], keys["VIEWER"], experiment["id"], run["id"], 0)
        platform.log_loss(FIRST_POINTS)
        yield platform


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and every console error and uncaught exception it had, with the URL it was at."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(_artifacts() / f"{name}.png"), full_page=True)

    @contextmanager
    def refused(self, status: int) -> Iterator[None]:
        """A step whose call the server refuses on purpose: the browser's own report of that
        response ("Failed to load resource: ... status of 400") is no error of the app's;
        anything else logged meanwhile still is."""
        before = len(self.errors)
        yield
        during = self.errors[before:]
        del self.errors[before:]
        self.errors += [e for e in during if f"status of {status}" not in e]


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    result = Watched(page)
    page.on(
        "console",
        lambda m: (
            result.errors.append(f"console at {page.url}: {m.text}") if m.type == "error" else None
        ),
    )
    page.on("pageerror", lambda e: result.errors.append(f"page error at {page.url}: {e}"))
    try:
        yield result
    finally:
        context.close()


def _sign_in(watched: Watched, platform: Platform, key: str, role: str) -> None:
    page = watched.page
    page.goto(f"{platform.url}/")
    page.locator("input[data-testid=api-key]").fill(key)
    page.locator("button[data-testid=sign-in]").click()
    whoami = page.locator("[data-testid=whoami]")
    expect(whoami).to_contain_text(SUBJECT)
    expect(whoami).to_contain_text(role)


def _wait_points(page: Page, key: str, at_least: int) -> None:
    """Until the chart of `key` draws at least `at_least` points."""
    page.wait_for_function(
        "([key, n]) => Number(document.querySelector(`[data-testid=chart][data-key='${key}']`)"
        "?.getAttribute('data-points')) >= n",
        arg=[key, at_least],
        timeout=UI_TIMEOUT_MS,
    )


def test_a_user_signs_in_browses_to_a_run_and_sees_its_chart_grow(
    platform: Platform, watched: Watched
) -> None:
    page = watched.page
    _sign_in(watched, platform, platform.user_key, "user")

    # the experiments list, with what a user may do
    link = page.locator("a[data-testid=experiment]", has_text=EXPERIMENT)
    expect(link).to_have_count(1)
    expect(page.locator("[data-write]").first).to_be_visible()
    watched.screenshot("user-experiments")

    # the experiment's run table: the run's row, its sortable columns, the filter's errors
    link.click()
    expect(page.locator("table[data-testid=runs-table]")).to_be_visible()
    rows = page.locator("tr[data-testid=run-row]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(RUN)
    expect(page.locator("th[data-testid='sort-metrics.loss']")).to_be_visible()
    expect(page.locator("th[data-testid='sort-params.lr']")).to_be_visible()
    expect(page.locator("[data-write]").first).to_be_visible()
    watched.screenshot("user-runs")
    bad = page.locator("input[data-testid=run-filter]")
    error = page.locator("[data-testid=filter-error]")
    with watched.refused(400):
        bad.fill("metrics.loss <")
        bad.press("Enter")
        expect(error).to_be_visible()
        expect(error).not_to_be_empty()
    assert int(error.get_attribute("data-column") or 0) >= 1, error.inner_text()
    watched.screenshot("user-runs-filter-error")
    bad.fill("params.lr = '0.01'")
    bad.press("Enter")
    expect(error).to_be_hidden()
    expect(rows).to_have_count(1)

    # the run page: status, params, tags, and the chart following the run live
    rows.first.locator("a").first.click()
    expect(page.locator("[data-testid=run-status]")).to_contain_text("RUNNING")
    expect(page.locator("[data-testid=params]")).to_contain_text("lr")
    expect(page.locator("[data-testid=params]")).to_contain_text("0.01")
    expect(page.locator("[data-testid=tags]")).to_contain_text("purpose")
    chart = page.locator("[data-testid=chart][data-key=loss]")
    expect(chart).to_have_attribute("data-points", str(FIRST_POINTS))
    expect(page.locator("[data-write]").first).to_be_visible()
    platform.log_loss(3)  # while the page is open: the points come through the run's watch
    _wait_points(page, "loss", FIRST_POINTS + 3)
    platform.log_loss(2)
    expect(chart).to_have_attribute("data-points", str(FIRST_POINTS + 5))
    watched.screenshot("user-run")

    # the artifact's link downloads its bytes (fetched with the key: a plain link has none)
    artifact = page.locator("a[data-testid=artifact]", has_text=ARTIFACT)
    expect(artifact).to_have_count(1)
    with page.expect_download(timeout=UI_TIMEOUT_MS) as download:
        artifact.click()
    assert Path(download.value.path()).read_bytes() == ARTIFACT_BYTES
    assert not watched.errors, watched.errors


def test_a_viewer_sees_the_same_pages_with_nothing_that_writes(
    platform: Platform, watched: Watched
) -> None:
    page = watched.page
    _sign_in(watched, platform, platform.viewer_key, "viewer")
    writes = page.locator("[data-write]")

    link = page.locator("a[data-testid=experiment]", has_text=EXPERIMENT)
    expect(link).to_have_count(1)
    assert writes.count() == 0, page.content()
    watched.screenshot("viewer-experiments")

    link.click()
    rows = page.locator("tr[data-testid=run-row]")
    expect(rows).to_have_count(1)
    assert writes.count() == 0, page.content()
    watched.screenshot("viewer-runs")

    rows.first.locator("a").first.click()
    expect(page.locator("[data-testid=params]")).to_contain_text("lr")
    _wait_points(page, "loss", FIRST_POINTS)
    assert writes.count() == 0, page.content()
    watched.screenshot("viewer-run")
    assert not watched.errors, watched.errors


def test_a_wrong_key_is_refused_on_the_sign_in_page(platform: Platform, watched: Watched) -> None:
    page = watched.page
    page.goto(f"{platform.url}/")
    with watched.refused(401):
        page.locator("input[data-testid=api-key]").fill("nk_not-a-key")
        page.locator("button[data-testid=sign-in]").click()
        expect(page.locator("[data-testid=signin-error]")).not_to_be_empty()
    expect(page.locator("[data-testid=whoami]")).to_have_count(0)
    watched.screenshot("signin-refused")
    assert not watched.errors, watched.errors
