"""Rollouts as real processes (the stack of test_deployer_e2e): a canary takes its share of the
predictions, promotion and rollback drop no request, a model onnxruntime cannot load is refused
and leaves the serving version alone, and a canary whose replicas cannot load it fails alone."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from typing import Any

import grpc
import pytest
import yaml
from neural.v1 import deployer_pb2

from tests.deployer.test_deployer_e2e import (  # noqa: F401 (fixtures)
    DeployerStack,
    create,
    deployment,
    error_of,
    get,
    instances,
    onnx_model_id,
    replica_pids,
    rows,
    stack,
    upload_artifact,
    wait_ready,
)
from tests.waiting import until

pytestmark = pytest.mark.e2e

SERVING = deployer_pb2.DEPLOYMENT_VERSION_STATE_SERVING
RETIRED = deployer_pb2.DEPLOYMENT_VERSION_STATE_RETIRED
FAILED = deployer_pb2.DEPLOYMENT_VERSION_STATE_FAILED


def versions(s: DeployerStack, deployment_id: str) -> dict[str, tuple[int, int]]:
    """Version id -> (traffic percent, state)."""
    return {v.id: (v.traffic_percent, v.state) for v in get(s, deployment_id).versions}


def localities(s: DeployerStack, name: str) -> dict[str, tuple[int, int]]:
    """cds.yaml's localities of deployment `name`: version -> (weight, endpoints)."""
    for c in yaml.safe_load(s.cds.read_text())["resources"]:
        if c["name"] == f"deployment.{name}":
            return {
                loc["locality"]["sub_zone"]: (
                    loc["load_balancing_weight"],
                    len(loc["lb_endpoints"]),
                )
                for loc in c["load_assignment"]["endpoints"]
            }
    return {}


def predict(s: DeployerStack, deployment_id: str) -> str:
    r = s.deployer().Predict(
        deployer_pb2.PredictRequest(id=deployment_id, instances=instances(rows(1))),
        metadata=s.meta("alice"),
        timeout=30,
    )
    return r.model_version


def rollout(s: DeployerStack, deployment_id: str, traffic: int, **model: Any) -> Any:
    request = deployer_pb2.RolloutDeploymentRequest(id=deployment_id, traffic_percent=traffic)
    if "model_id" in model:
        request.model_id = model["model_id"]
    else:
        request.run_artifact.run_id, request.run_artifact.path = model["run_id"], model["path"]
    return request


class Load:
    """Predictions in a loop on another thread, counting answers by version and failures."""

    def __init__(self, s: DeployerStack, deployment_id: str) -> None:
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(s, deployment_id), daemon=True)

    def _run(self, s: DeployerStack, deployment_id: str) -> None:
        while not self.stop.is_set():
            try:
                self.answers[predict(s, deployment_id)] += 1
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def test_canary_promote_and_rollback(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
    onnx_models: dict,
) -> None:
    s, alice = stack.deployer(), stack.meta("alice")
    d = create(stack, deployment("canaried", replicas=1, model_id=onnx_model_id))
    wait_ready(stack, d.id)
    run_id = upload_artifact(stack, onnx_models["dense"])
    artifact = {"run_id": run_id, "path": "model/model.onnx"}
    # bad requests first: they change nothing
    for traffic in (0, 101):
        err = error_of(s.RolloutDeployment, rollout(stack, d.id, traffic, **artifact), alice)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "traffic_percent" in err.details()
    err = error_of(s.RolloutDeployment, rollout(stack, d.id, 20, **artifact), stack.meta("bob"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = error_of(s.PromoteDeployment, deployer_pb2.PromoteDeploymentRequest(id=d.id), alice)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no canary" in err.details()
    broken = upload_artifact(stack, onnx_models["broken"])
    err = error_of(
        s.RolloutDeployment,
        rollout(stack, d.id, 20, run_id=broken, path="model/model.onnx"),
        alice,
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "run_artifact: onnxruntime cannot load the model" in err.details()
    assert list(versions(stack, d.id)) == ["v1"]
    assert sorted(p.name for p in (stack.storage / "deployments" / d.id).iterdir()) == ["v1"]

    # a 20 % canary
    out = s.RolloutDeployment(rollout(stack, d.id, 20, **artifact), metadata=alice)
    assert [(v.id, v.traffic_percent) for v in out.versions] == [("v2", 20), ("v1", 80)]
    assert out.model_version == "v1"  # the version with most of the traffic
    until(lambda: localities(stack, "canaried") == {"v1": (80, 1), "v2": (20, 1)}, 120)
    until(lambda: versions(stack, d.id)["v2"] == (20, SERVING))
    err = error_of(s.RolloutDeployment, rollout(stack, d.id, 50, **artifact), alice)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "canary" in err.details()
    answers = Counter(predict(stack, d.id) for _ in range(400))
    assert set(answers) == {"v1", "v2"}
    assert 80 - 32 <= answers["v2"] <= 80 + 32, answers  # 4 standard deviations

    # promoted under load: no request fails, v1 retires once v2 serves alone
    with Load(stack, d.id) as load:
        until(lambda: sum(load.answers.values()) >= 20)
        s.PromoteDeployment(deployer_pb2.PromoteDeploymentRequest(id=d.id), metadata=alice)
        until(lambda: versions(stack, d.id)["v1"] == (0, RETIRED), 60)
        until(lambda: localities(stack, "canaried") == {"v2": (100, 1)})
        seen = sum(load.answers.values())
        until(lambda: sum(load.answers.values()) >= seen + 20)
    assert load.failures == []
    assert predict(stack, d.id) == "v2" and get(stack, d.id).model_version == "v2"
    assert len(replica_pids("canaried")) == 1

    # a canary rolled back under load: no request fails, v3 retires, v2 serves alone
    s.RolloutDeployment(rollout(stack, d.id, 50, model_id=onnx_model_id), metadata=alice)
    until(lambda: versions(stack, d.id)["v3"] == (50, SERVING), 120)
    with Load(stack, d.id) as load:
        until(lambda: sum(load.answers.values()) >= 20)
        s.RollbackDeployment(deployer_pb2.RollbackDeploymentRequest(id=d.id), metadata=alice)
        until(lambda: versions(stack, d.id)["v3"] == (0, RETIRED), 60)
        seen = sum(load.answers.values())
        until(lambda: sum(load.answers.values()) >= seen + 20)
    assert load.failures == []
    assert versions(stack, d.id)["v2"] == (100, SERVING)
    until(lambda: localities(stack, "canaried") == {"v2": (100, 1)})
    until(lambda: len(replica_pids("canaried")) == 1)


def test_a_canary_that_cannot_load_fails_alone(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
    onnx_models: dict,
) -> None:
    s, alice = stack.deployer(), stack.meta("alice")
    d = create(stack, deployment("spoiled-canary", replicas=1, model_id=onnx_model_id))
    wait_ready(stack, d.id)
    run_id = upload_artifact(stack, onnx_models["dense"])
    s.RolloutDeployment(
        rollout(stack, d.id, 30, run_id=run_id, path="model/model.onnx"), metadata=alice
    )
    until(lambda: versions(stack, d.id)["v2"] == (30, SERVING), 120)
    # the canary's file goes bad; its replica dies; the next one cannot load it
    (stack.storage / "deployments" / d.id / "v2" / "model.onnx").write_bytes(b"not onnx")
    before = replica_pids("spoiled-canary")
    version_pids = {
        pid
        for pid in before
        if b"v2" in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")  # noqa: SIM115
    }
    [canary_pid] = version_pids
    os.kill(canary_pid, signal.SIGKILL)
    until(lambda: versions(stack, d.id)["v2"][1] == FAILED, 60, stack.log("controller"))
    found = get(stack, d.id)
    assert found.state == deployer_pb2.DEPLOYMENT_STATE_READY
    [v2] = [v for v in found.versions if v.id == "v2"]
    assert "the model cannot be served" in v2.error and v2.traffic_percent == 0
    assert versions(stack, d.id)["v1"] == (100, SERVING)
    until(lambda: localities(stack, "spoiled-canary") == {"v1": (100, 1)})
    assert predict(stack, d.id) == "v1"
