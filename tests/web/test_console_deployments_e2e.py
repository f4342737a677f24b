"""The console's deployments pages in headless Chromium against a `make run` stack: a small
digits classifier trained (one epoch) and deployed through REST with the user's key, then in the
browser the deployments list, the deployment's page (state, replicas, its version with its run
and its traffic share, an example input of the model's shape), a prediction whose output equals
REST Predict's for the same rows, bad JSON caught in the page before any call, an input of the
wrong shape refused by the server with its message shown, and a viewer's key of the same
subject that sees the pages with no control it cannot use (Predict needs the user role)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Page, Request, expect

from tests.waiting import until
from tests.web.conftest import Console, Watched, post

pytestmark = pytest.mark.e2e

SUBJECT = "console-deploy"
EXPERIMENT = "console-deploy-experiment"
NAME = "console-deploy-digits"
PROGRAM = """network ConsoleDigits {
  input: (64,)
  layers:
    Dense(16, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
  train { epochs: 1 batch_size: 64 validation_split: 0.2 }
}
"""
FEATURES = 64
CLASSES = 10
TRAINING_TIMEOUT_S = 300
READY_TIMEOUT_S = 180


@dataclass
class Deployed:
    console: Console
    user_key: str
    viewer_key: str
    run_id: str
    deployment: dict[str, Any]
    rows: list[list[float]]  # a valid input: digits' first rows, as the trainer scales them
    expected: list[list[float]]  # what REST Predict answered for them
    wrong_shape: dict[str, Any]  # REST's google.rpc.Status for rows of 3 values, and its code
    wrong_status: int


def _train(api: Any) -> str:
    """A one-epoch training on the built-in digits, submitted through REST; its run's id."""
    job = post(
        api,
        "/v1/training-jobs",
        {
            "source": PROGRAM,
            "dataset": {"builtin": "BUILTIN_DATASET_DIGITS"},
            "epochs": 1,
            "experiment": EXPERIMENT,
        },
    )

    def finished() -> dict[str, Any] | None:
        found = api.get(f"/v1/training-jobs/{job['id']}").json()
        assert found["state"] not in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"), found
        return found if found["state"] == "JOB_STATE_SUCCEEDED" else None

    done = until(finished, TRAINING_TIMEOUT_S, "the training job succeeded", every=1)
    return str(done["details"]["run_id"])


def _deploy(api: Any, run_id: str) -> dict[str, Any]:
    created = post(
        api,
        "/v1/deployments",
        {"name": NAME, "run_artifact": {"run_id": run_id, "path": "model.onnx"}},
    )

    def ready() -> dict[str, Any] | None:
        found = api.get(f"/v1/deployments/{created['id']}").json()
        assert found.get("state") != "DEPLOYMENT_STATE_FAILED", found
        if found.get("state") == "DEPLOYMENT_STATE_READY" and found.get("ready_replicas", 0) >= 1:
            return found
        return None

    return until(ready, READY_TIMEOUT_S, "the deployment READY", every=1)


@pytest.fixture(scope="module")
def deployed(console: Console) -> Deployed:
    """A user's and a viewer's key of one subject, a trained run of theirs, its model deployed
    and READY, and REST Predict's answers to compare the page's with."""
    from sklearn.datasets import load_digits

    keys = console.keys(SUBJECT, "USER", "VIEWER")
    with console.api(keys["USER"]) as api:
        run_id = _train(api)
        deployment = _deploy(api, run_id)
        rows = (load_digits().data[:3] / 16.0).round(4).tolist()
        answer = post(api, f"/v1/deployments/{deployment['id']}:predict", {"instances": rows})
        wrong = api.post(
            f"/v1/deployments/{deployment['id']}:predict", json={"instances": [[1, 2, 3]]}
        )
    assert wrong.status_code >= 400, wrong.text
    return Deployed(
        console,
        keys["USER"],
        keys["VIEWER"],
        run_id,
        deployment,
        rows,
        answer["predictions"],
        wrong.json(),
        wrong.status_code,
    )


def _open_list(page: Page) -> None:
    page.locator("a[data-testid=nav-deployments]").click()
    expect(page.locator("table[data-testid=deployments-table]")).to_be_visible()


def _check_list_row(page: Page, deployed: Deployed) -> None:
    row = page.locator(
        f"tr[data-testid=deployment-row][data-deployment-id='{deployed.deployment['id']}']"
    )
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-state", "READY")
    expect(row.locator("a[data-testid=deployment]")).to_have_text(NAME)
    expect(row.locator("[data-testid=deployment-replicas]")).to_have_text("1/1")
    expect(row.locator("[data-testid=deployment-versions]")).to_have_text("v1")
    expect(row.locator("[data-testid=deployment-traffic]")).to_have_text("v1 100%")
    expect(row.locator("a[data-testid=model-run]")).to_have_attribute(
        "href", f"#/runs/{deployed.run_id}"
    )


def _check_deployment(page: Page, deployed: Deployed) -> None:
    expect(page.locator("h1")).to_have_text(NAME)
    expect(page.locator("[data-testid=deployment-state]")).to_have_text("READY")
    expect(
        page.locator("[data-testid=deployment-summary] [data-testid=deployment-replicas]")
    ).to_have_text("1/1")
    version = page.locator("tr[data-testid=version-row][data-version=v1]")
    expect(version).to_have_attribute("data-state", "SERVING")
    expect(version.locator("[data-testid=version-traffic]")).to_have_text("100%")
    expect(version.locator("[data-testid=version-ready]")).to_have_text("1")
    expect(version.locator("a[data-testid=model-run]")).to_have_attribute(
        "href", f"#/runs/{deployed.run_id}"
    )
    segment = page.locator("[data-testid=traffic-bar] [data-testid=traffic-segment]")
    expect(segment).to_have_count(1)
    expect(segment).to_have_attribute("data-version", "v1")
    expect(segment).to_have_attribute("data-percent", "100")


def _predict(page: Page, text: str) -> None:
    page.locator("textarea[data-testid=predict-input]").fill(text)
    page.locator("button[data-testid=predict]").click()


def test_a_user_sees_the_deployment_and_predicts_with_it(
    deployed: Deployed, watched: Watched
) -> None:
    page = watched.page
    predict_calls: list[str] = []

    def count(request: Request) -> None:
        if request.url.endswith(":predict"):
            predict_calls.append(request.url)

    page.on("request", count)
    watched.sign_in(deployed.console, deployed.user_key, SUBJECT, "user")

    _open_list(page)
    _check_list_row(page, deployed)
    expect(page.locator("form[data-testid=create-deployment-form][data-write]")).to_be_visible()
    watched.screenshot("deployments")

    # the create form shows the server's refusal and the field it names, as REST answers it
    bad = {"name": f"{NAME}-bad", "model_id": "not a model id!"}
    with deployed.console.api(deployed.user_key) as api:
        refused = api.post("/v1/deployments", json=bad)
    assert refused.status_code == 400, refused.text
    [violation] = refused.json()["details"][0]["field_violations"]
    with watched.refused(400):
        page.locator("input[data-testid=deployment-name]").fill(bad["name"])
        page.locator("input[data-testid=deployment-model]").fill(bad["model_id"])
        page.locator("button[data-testid=create-deployment]").click()
        create_error = page.locator("[data-testid=create-deployment-error]")
        expect(create_error).to_contain_text(refused.json()["message"])
    expect(
        create_error.locator(f"[data-testid=violation][data-field='{violation['field']}']")
    ).to_contain_text(violation["description"])

    page.locator("a[data-testid=deployment]", has_text=NAME).click()
    _check_deployment(page, deployed)
    # the example input has the model's shape (from the run's program): one row of 64 zeros
    shape = page.locator("[data-testid=predict-shape]")
    expect(shape).to_have_attribute("data-shape", f"[-1,{FEATURES}]")
    example = json.loads(page.locator("textarea[data-testid=predict-input]").input_value())
    assert example == {"instances": [[0] * FEATURES]}
    expect(page.locator("[data-write]").first).to_be_visible()
    watched.screenshot("deployment")

    # a prediction: the page shows what REST Predict answers for the same rows
    _predict(page, json.dumps({"instances": deployed.rows}))
    raw = page.locator("pre[data-testid=predict-raw]")
    expect(raw).to_be_visible()
    shown = np.array(json.loads(raw.inner_text()), dtype=np.float64)
    expected = np.array(deployed.expected, dtype=np.float64)
    assert shown.shape == (len(deployed.rows), CLASSES)
    assert np.allclose(shown, expected, rtol=0, atol=1e-7), (shown, expected)
    tops = page.locator("tr[data-testid=top-class]")
    expect(tops).to_have_count(len(deployed.rows))
    best = [int(tops.nth(i).get_attribute("data-class") or -1) for i in range(tops.count())]
    assert best == expected.argmax(axis=1).tolist()
    expect(page.locator("[data-testid=predict-version]")).to_have_text("v1")
    expect(page.locator("[data-testid=predict-error]")).to_be_hidden()
    assert len(predict_calls) == 1, predict_calls
    watched.screenshot("deployment-predicted")

    # bad JSON: caught in the page, where it breaks, with no call made
    _predict(page, '{"instances": [[1, 2,]]}')
    error = page.locator("[data-testid=predict-error]")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Not valid JSON")
    expect(error).to_contain_text("line 1, column")
    expect(raw).to_be_hidden()
    assert len(predict_calls) == 1, predict_calls

    # rows of the wrong shape: the server's refusal, its message and any field it names
    with watched.refused(deployed.wrong_status):
        _predict(page, '{"instances": [[1, 2, 3]]}')
        expect(error).to_contain_text(deployed.wrong_shape["message"])
    until(lambda: len(predict_calls) == 2, 30, "the refused call counted")
    for detail in deployed.wrong_shape.get("details", []):
        for violation in detail.get("field_violations", []):
            expect(
                error.locator(f"[data-testid=violation][data-field='{violation['field']}']")
            ).to_contain_text(violation["description"])
    assert not watched.errors, watched.errors


def test_a_viewer_sees_the_deployment_with_no_control(deployed: Deployed, watched: Watched) -> None:
    page = watched.page
    watched.sign_in(deployed.console, deployed.viewer_key, SUBJECT, "viewer")
    writes = page.locator("[data-write]")

    _open_list(page)
    _check_list_row(page, deployed)
    assert writes.count() == 0, page.content()

    page.locator("a[data-testid=deployment]", has_text=NAME).click()
    _check_deployment(page, deployed)
    expect(page.locator("[data-testid=predict-needs-user]")).to_be_visible()
    expect(page.locator("[data-testid=predict-input]")).to_have_count(0)
    expect(page.locator("button")).to_have_count(1)  # only the header's sign-out
    assert writes.count() == 0, page.content()
    watched.screenshot("viewer-deployment")
    assert not watched.errors, watched.errors


def test_a_user_rolls_out_a_canary_and_rolls_it_back(deployed: Deployed, watched: Watched) -> None:
    page = watched.page
    watched.sign_in(deployed.console, deployed.user_key, SUBJECT, "user")
    page.goto(f"{deployed.console.url}/#/deployments/{deployed.deployment['id']}")
    _check_deployment(page, deployed)
    segments = page.locator("[data-testid=traffic-bar] [data-testid=traffic-segment]")

    # the same run's model as a canary taking a quarter of the predictions
    page.locator("input[data-testid=rollout-run]").fill(deployed.run_id)
    page.locator("input[data-testid=rollout-percent]").fill("25")
    page.locator("button[data-testid=rollout]").click()
    expect(segments).to_have_count(2)
    expect(page.locator("[data-testid=traffic-segment][data-version=v1]")).to_have_attribute(
        "data-percent", "75"
    )
    expect(page.locator("[data-testid=traffic-segment][data-version=v2]")).to_have_attribute(
        "data-percent", "25"
    )
    canary = page.locator("tr[data-testid=version-row][data-version=v2]")
    # its replica starts while the page follows the deployment
    expect(canary).to_have_attribute("data-state", "SERVING", timeout=READY_TIMEOUT_S * 1000)
    expect(canary.locator("[data-testid=version-ready]")).to_have_text("1")
    expect(page.locator("button[data-testid=rollout]")).to_have_count(0)  # one at a time
    watched.screenshot("deployment-canary")

    # rolled back: all the traffic to v1 again, and the canary retires
    page.locator("button[data-testid=rollback]").click()
    expect(segments).to_have_count(1)
    expect(segments).to_have_attribute("data-version", "v1")
    expect(segments).to_have_attribute("data-percent", "100")
    expect(canary).to_have_attribute("data-state", "RETIRED", timeout=READY_TIMEOUT_S * 1000)
    expect(page.locator("button[data-testid=rollout]")).to_be_visible()
    with deployed.console.api(deployed.user_key) as api:
        found = api.get(f"/v1/deployments/{deployed.deployment['id']}").json()
    assert {v["id"]: v.get("traffic_percent", 0) for v in found["versions"]} == {"v1": 100, "v2": 0}
    assert not watched.errors, watched.errors
