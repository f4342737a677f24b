"""The console's training jobs and workers pages in headless Chromium against a `make run`
stack: a user starts a training from the "New training" form (after the server refused a
broken program, its error shown at the program's field), follows it live on the job page
(WatchTrainingJob) and on its run's page (the loss chart grows while the job trains), sees its
webhook deliveries, then starts a longer one and cancels it from the console; an admin sees the
workers; a viewer sees the queue with nothing that writes. Selectors are the console's DOM
contract (/tmp/helpers/CONSOLE.md, web/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from tests.web.conftest import UI_TIMEOUT_MS, Console, Watched, post

pytestmark = pytest.mark.e2e

# The keys name one subject: a non-admin sees the jobs its subject owns.
SUBJECT = "console-jobs"
EXPERIMENT = "console-jobs-experiment"
# Slow enough per epoch (a fraction of a second) that the run's chart is seen growing, small
# enough that a few dozen epochs take well under a minute.
SOURCE = """network ConsoleDigits {
  input: (64,)
  layers:
    Dense(256, "relu")
    Dense(256, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.001)
  train { epochs: 4 batch_size: 8 validation_split: 0.2 }
}
"""
BROKEN = "network Broken {\n  input: (64,)\n"
EPOCHS = 40  # the job followed to the end
LONG_EPOCHS = 5000  # the job cancelled half way
# The stack's address guard refuses loopback hooks: each event still gets a delivery record.
HOOK_URL = "http://127.0.0.1:9/console-jobs-hook"
HOOK_SECRET = "console-jobs-secret-0123"
IRIS = """network ConsoleIris {
  input: (4,)
  layers:
    Dense(8, "relu")
    Output(3, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
}
"""
# The worker starts (imports, warm-up) and may be busy with another test file's job first.
START_TIMEOUT_MS = 180_000
# the job page's state (the jobs list, which may still be on screen, has one per row)
JOB_STATE = "[data-testid=job-head] [data-testid=job-state]"
FINISH_TIMEOUT_MS = 240_000


@dataclass
class Platform:
    console: Console
    user_key: str
    viewer_key: str
    admin_key: str
    small_job_id: str  # a job submitted through REST, for the viewer to see

    def job(self, job_id: str) -> dict:
        with self.console.api(self.user_key) as api:
            response = api.get(f"/v1/training-jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def platform(console: Console) -> Platform:
    keys = console.keys(SUBJECT, "USER", "VIEWER", "ADMIN")
    with console.api(keys["USER"]) as user:
        job = post(
            user,
            "/v1/training-jobs",
            {
                "source": IRIS,
                "backend": "TRAINING_BACKEND_PYTORCH",
                "dataset": {"builtin": "BUILTIN_DATASET_IRIS"},
                "epochs": 2,
                "experiment": EXPERIMENT,
            },
        )
    return Platform(console, keys["USER"], keys["VIEWER"], keys["ADMIN"], job["id"])


def _wait_attribute_at_least(page: Page, selector: str, attribute: str, at_least: float) -> float:
    """Until the element's numeric `attribute` is at least `at_least`; its value then."""
    handle = page.wait_for_function(
        "([sel, attr, n]) => { const v = Number(document.querySelector(sel)?.getAttribute(attr));"
        " return v >= n ? v : null; }",
        arg=[selector, attribute, at_least],
        timeout=UI_TIMEOUT_MS,
    )
    return float(handle.json_value())


def _chart_points(page: Page, at_least: int) -> int:
    """Until the run's loss chart draws at least `at_least` points; how many it draws then."""
    chart = "[data-testid=chart][data-key='loss']"
    return int(_wait_attribute_at_least(page, chart, "data-points", at_least))


def _start_training(watched: Watched, epochs: int, hook: bool) -> str:
    """Fills the New training form on the jobs page and submits it; the new job's id."""
    page = watched.page
    page.locator("[data-testid=nav-jobs]").click()
    form = page.locator("form[data-testid=new-training-form]")
    if not form.is_visible():
        page.locator("[data-testid=new-training-open]").click()
    page.locator("[data-testid=train-source]").fill(SOURCE)
    page.locator("[data-testid=train-dataset]").select_option("builtin:BUILTIN_DATASET_DIGITS")
    page.locator("[data-testid=train-backend]").select_option("TRAINING_BACKEND_PYTORCH")
    page.locator("[data-testid=train-epochs]").fill(str(epochs))
    page.locator("[data-testid=train-experiment]").fill(EXPERIMENT)
    page.locator("[data-testid=train-webhook-url]").fill(HOOK_URL if hook else "")
    page.locator("[data-testid=train-webhook-secret]").fill(HOOK_SECRET if hook else "")
    page.locator("[data-testid=submit-training]").click()
    page.wait_for_url(re.compile(r"#/jobs/[^/]+$"))
    return page.url.rsplit("/", 1)[-1]


def _wait_running(page: Page) -> None:
    """Until the job page shows the job running with an epoch done (its watch's events)."""
    state = page.locator(JOB_STATE)
    expect(state).to_have_text("RUNNING", timeout=START_TIMEOUT_MS)
    page.wait_for_function(
        "() => Number(document.querySelector('[data-testid=job-progress]')"
        "?.getAttribute('data-epoch')) >= 1",
        timeout=START_TIMEOUT_MS,
    )


def test_a_user_starts_a_training_follows_it_live_and_cancels_another(
    platform: Platform, watched: Watched
) -> None:
    page = watched.page
    watched.sign_in(platform.console, platform.user_key, SUBJECT, "user")
    page.locator("[data-testid=nav-jobs]").click()
    expect(page.locator("tr[data-testid=job-row]").first).to_be_visible()
    expect(page.locator(f"tr[data-job-id='{platform.small_job_id}']")).to_have_count(1)

    # a field the form itself refuses (no call is made), then a program the server refuses:
    # its diagnostic at the program's field, with line:column
    page.locator("[data-testid=new-training-open]").click()
    page.locator("[data-testid=train-epochs]").fill("0")
    page.locator("[data-testid=submit-training]").click()
    expect(page.locator("[data-testid=field-error][data-field=epochs]")).to_contain_text("1 and")
    page.locator("[data-testid=train-epochs]").fill("")
    page.locator("[data-testid=train-source]").fill(BROKEN)
    with watched.refused(400):
        page.locator("[data-testid=submit-training]").click()
        source_error = page.locator("[data-testid=field-error][data-field=source]")
        expect(source_error).to_contain_text(re.compile(r"\d+:\d+: syntax"))
    expect(page.locator("[data-testid=form-error]")).not_to_be_empty()
    watched.screenshot("jobs-form-error")
    assert re.search(r"#/jobs$", page.url), page.url  # still on the form

    # a training that works: the job page follows it through its watch
    job_id = _start_training(watched, EPOCHS, hook=True)
    _wait_running(page)
    expect(page.locator("[data-testid=job-event][data-type=progress]").first).to_be_visible()
    expect(page.locator("[data-testid=job-progress]")).to_contain_text(f"/{EPOCHS}")
    expect(page.locator("[data-testid=job-metrics]")).to_contain_text("loss")
    expect(page.locator("button[data-testid=cancel-job]")).to_be_visible()
    watched.screenshot("job")

    # its run's chart grows while the job trains: points after the history came live
    page.locator("a[data-testid=job-run]").click()
    expect(page.locator("[data-testid=run-status]")).to_be_visible()
    seen = _chart_points(page, 2)
    _chart_points(page, seen + 2)
    assert seen + 2 <= EPOCHS

    # back on the job page: it ends, with its deliveries (refused loopback hooks: no code)
    page.go_back()
    expect(page.locator(JOB_STATE)).to_have_text("SUCCEEDED", timeout=FINISH_TIMEOUT_MS)
    expect(page.locator("[data-testid=job-progress]")).to_have_attribute("data-progress", "1")
    expect(page.locator("[data-testid=job-progress]")).to_contain_text(f"epoch {EPOCHS}/{EPOCHS}")
    expect(page.locator("[data-testid=job-event][data-type=completed]")).to_have_count(1)
    expect(page.locator("button[data-testid=cancel-job]")).to_be_hidden()
    # (sent by the worker's queue, behind whatever it holds: maybe another test's job)
    expect(page.locator("tr[data-testid=webhook-delivery]").first).to_be_visible(
        timeout=START_TIMEOUT_MS
    )
    expect(page.locator("[data-testid=webhook-deliveries]")).to_contain_text(HOOK_URL)
    watched.screenshot("job-succeeded")
    job = platform.job(job_id)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["webhook_deliveries"], job

    # the queue: the job succeeded, with its run's link
    page.locator("[data-testid=nav-jobs]").click()
    row = page.locator(f"tr[data-testid=job-row][data-job-id='{job_id}']")
    expect(row).to_have_attribute("data-state", "succeeded")
    expect(row.locator("a[data-testid=job-run]")).to_have_count(1)
    expect(row.locator("[data-testid=job-progress]")).to_have_attribute("data-progress", "1")
    expect(row.locator("[data-testid=job-progress]")).to_contain_text(f"epoch {EPOCHS}/{EPOCHS}")
    watched.screenshot("jobs")

    # a longer one, cancelled from its page while it trains
    long_id = _start_training(watched, LONG_EPOCHS, hook=False)
    assert long_id != job_id
    _wait_running(page)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("button[data-testid=cancel-job]").click()
    expect(page.locator("[data-testid=cancel-result]")).not_to_be_empty()
    expect(page.locator(JOB_STATE)).to_have_text("CANCELLED", timeout=60_000)
    expect(page.locator("[data-testid=cancel-result]")).to_have_text("Cancelled.")
    expect(page.locator("[data-testid=job-event][data-type=cancelled]")).to_have_count(1)
    expect(page.locator("button[data-testid=cancel-job]")).to_be_hidden()
    assert platform.job(long_id)["state"] == "JOB_STATE_CANCELLED"
    watched.screenshot("job-cancelled")

    page.locator("[data-testid=nav-jobs]").click()
    long_row = page.locator(f"tr[data-job-id='{long_id}']")
    expect(long_row).to_have_attribute("data-state", "cancelled")
    assert not watched.errors, watched.errors


def test_an_admin_sees_the_workers_refreshed(platform: Platform, watched: Watched) -> None:
    page = watched.page
    watched.sign_in(platform.console, platform.admin_key, SUBJECT, "admin")
    page.locator("[data-testid=nav-workers]").click()
    rows = page.locator("tr[data-testid=worker-row]")
    expect(rows.first).to_be_visible()
    # the training worker beats once it has started: the page shows it on a later refresh
    expect(rows.filter(has_text="training").first).to_be_visible(timeout=START_TIMEOUT_MS)
    expect(rows.filter(has_text="training").first).to_have_attribute("data-alive", "true")
    expect(page.locator("[data-testid=workers-status]")).to_contain_text("updated")
    page.locator("[data-testid=include-dead]").check()
    expect(rows.first).to_be_visible()
    watched.screenshot("workers")
    assert not watched.errors, watched.errors


def test_a_viewer_sees_jobs_and_workers_with_nothing_that_writes(
    platform: Platform, watched: Watched
) -> None:
    page = watched.page
    watched.sign_in(platform.console, platform.viewer_key, SUBJECT, "viewer")
    writes = page.locator("[data-write]")

    page.locator("[data-testid=nav-jobs]").click()
    row = page.locator(f"tr[data-testid=job-row][data-job-id='{platform.small_job_id}']")
    expect(row).to_have_count(1)
    assert writes.count() == 0, page.content()
    watched.screenshot("viewer-jobs")

    row.locator("a[data-testid=job-link]").click()
    expect(page.locator(JOB_STATE)).not_to_have_text("UNSPECIFIED")
    expect(page.locator("[data-testid=job-events] [data-testid=job-event]").first).to_be_visible()
    assert writes.count() == 0, page.content()

    # ListWorkers is for admins: a viewer is told so, and no call is refused
    page.locator("[data-testid=nav-workers]").click()
    expect(page.locator("[data-testid=workers-admin-only]")).to_be_visible()
    assert writes.count() == 0, page.content()
    assert not watched.errors, watched.errors
