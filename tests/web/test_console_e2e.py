"""The web console (web/, served by Envoy at /) in headless Chromium (Debian's, driven by
Playwright) against a `make run` stack: sign in with a key, the experiments list, an
experiment's run table, a run page whose chart grows while the run logs, and a viewer's key that
shows nothing that writes. Selectors are the DOM contract of the console (data-testid and
data-write attributes). Every page fails the test on a console error or an uncaught exception,
and is saved as a screenshot (conftest.py)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import UI_TIMEOUT_MS, Console, Watched, post

pytestmark = pytest.mark.e2e

# Both keys name the same subject: a non-admin sees the rows its subject owns, so the viewer
# reads what the user wrote.
SUBJECT = "console-e2e"
EXPERIMENT = "console-e2e-experiment"
RUN = "console-e2e-run"
FIRST_POINTS = 5
ARTIFACT = "notes/summary.txt"
ARTIFACT_BYTES = b"console e2e: an artifact to download\n"


@dataclass
class Platform:
    console: Console
    user_key: str
    viewer_key: str
    experiment_id: str
    run_id: str
    next_step: int = FIRST_POINTS

    @property
    def url(self) -> str:
        return self.console.url

    def log_loss(self, count: int) -> None:
        points = [
            {"key": "loss", "value": 1.0 / (step + 1), "step": str(step)}
            for step in range(self.next_step, self.next_step + count)
        ]
        with self.console.api(self.user_key) as api:
            response = api.post(f"/v1/runs/{self.run_id}:logMetrics", json={"metrics": points})
        assert response.status_code == 200, response.text
        self.next_step += count


@pytest.fixture(scope="module")
def platform(console: Console) -> Platform:
    """A user's and a viewer's key of one subject, and one experiment with a run that has
    params, tags, an artifact and a first few points."""
    keys = console.keys(SUBJECT, "USER", "VIEWER")
    with console.api(keys["USER"]) as user:
        experiment = post(user, "/v1/experiments", {"name": EXPERIMENT})
        run = post(user, f"/v1/experiments/{experiment['id']}/runs", {"name": RUN})
        post(user, f"/v1/runs/{run['id']}:logParams", {"params": {"lr": "0.01"}})
        post(user, f"/v1/runs/{run['id']}:setTags", {"tags": {"purpose": "e2e"}})
        # a client stream over REST: a JSON array of its messages, here one chunk
        chunk = {
            "data": base64.b64encode(ARTIFACT_BYTES).decode(),
            "offset": "0",
            "name": ARTIFACT.rsplit("/", 1)[-1],
            "total_size": str(len(ARTIFACT_BYTES)),
            "sha256": hashlib.sha256(ARTIFACT_BYTES).hexdigest(),
        }
        post(
            user,
            "/v1/runs:uploadArtifact",
            [{"run_id": run["id"], "path": ARTIFACT, "chunk": chunk}],
        )
    platform = Platform(console, keys["USER"], keys["VIEWER"], experiment["id"], run["id"], 0)
    platform.log_loss(FIRST_POINTS)
    return platform


def _sign_in(watched: Watched, platform: Platform, key: str, role: str) -> None:
    watched.sign_in(platform.console, key, SUBJECT, role)


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
    expect(page.locator("table[data-testid=runs-table]")).to_have_attribute("aria-busy", "false")
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
