"""Rollouts as real processes (the stack of test_deployer_e2e): a canary takes its share of the
predictions, promotion and rollback drop no request, a model onnxruntime cannot load is refused
and leaves the serving version alone, and a canary whose replicas cannot load it fails alone.

Each rollout is a job on the kit's lifecycle: it succeeds once the canary serves its share,
fails with the loader's reason, is cancelled by a rollback before then, tells its webhooks,
and once ended is never touched again (not even by a restarted controller)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from neural.v1 import common_pb2, deployer_pb2

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
from tests.services.receiver import Receiver
from tests.waiting import until

pytestmark = pytest.mark.e2e

SERVING = deployer_pb2.DEPLOYMENT_VERSION_STATE_SERVING
RETIRED = deployer_pb2.DEPLOYMENT_VERSION_STATE_RETIRED
FAILED = deployer_pb2.DEPLOYMENT_VERSION_STATE_FAILED
JOB_SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
JOB_FAILED = common_pb2.JOB_STATE_FAILED
JOB_CANCELLED = common_pb2.JOB_STATE_CANCELLED
SECRET = "a-secret-of-the-tests"


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
    until(lambda: len(replica_pids("canaried")) == 1, 60)  # v1's replica drains, then exits

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


# ------------------------------------------------------------------ rollout jobs
def job(s: DeployerStack, job_id: str, who: str = "alice") -> common_pb2.Job:
    return s.deployer().GetRolloutJob(common_pb2.GetJobRequest(id=job_id), metadata=s.meta(who))


def watch(s: DeployerStack, job_id: str) -> list[tuple[str, int]]:
    """The job's events, (type, state), from now until it ends."""
    stream = s.deployer().WatchRolloutJob(
        common_pb2.WatchJobRequest(id=job_id), metadata=s.meta("alice"), timeout=180
    )
    return [(e.type, e.state) for e in stream]


@contextlib.contextmanager
def controller_paused(s: DeployerStack) -> Iterator[None]:
    """The controller stopped (SIGSTOP) for what the block does, so that it acts after it."""
    pid = s.procs["controller"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_rollout_is_a_job_told_to_its_webhooks(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    s, alice = stack.deployer(), stack.meta("alice")
    d = create(stack, deployment("jobbed", replicas=1, model_id=onnx_model_id))
    wait_ready(stack, d.id)
    # webhooks are checked as every job's
    bad = rollout(stack, d.id, 30, model_id=onnx_model_id)
    bad.webhooks.add(url="ftp://example.com/hook", secret="short")
    err = error_of(s.RolloutDeployment, bad, alice)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = error_details_pb2.BadRequest()
    assert rpc_status.from_call(err).details[0].Unpack(bad_request)
    fields = [v.field for v in bad_request.field_violations]
    assert fields == ["webhooks[0].url", "webhooks[0].secret"]
    assert list(versions(stack, d.id)) == ["v1"]

    # rolled back before its replicas start: cancelled
    with controller_paused(stack):
        out = s.RolloutDeployment(rollout(stack, d.id, 30, model_id=onnx_model_id), metadata=alice)
        assert out.rollout_job_id and out.versions[0].rollout_job_id == out.rollout_job_id
        assert job(stack, out.rollout_job_id).state == common_pb2.JOB_STATE_QUEUED
        s.RollbackDeployment(deployer_pb2.RollbackDeploymentRequest(id=d.id), metadata=alice)
    assert watch(stack, out.rollout_job_id)[-1] == ("cancelled", JOB_CANCELLED)
    cancelled = job(stack, out.rollout_job_id)
    assert cancelled.kind == "rollout" and cancelled.owner == "alice"
    until(lambda: versions(stack, d.id)["v2"] == (0, RETIRED), 60)

    with Receiver() as hooks:
        request = rollout(stack, d.id, 30, model_id=onnx_model_id)
        request.webhooks.add(url=hooks.url, secret=SECRET)
        out = s.RolloutDeployment(request, metadata=alice)
        job_id = out.rollout_job_id
        assert [v.rollout_job_id for v in out.versions if v.id == "v3"] == [job_id]
        events = watch(stack, job_id)
        assert events[-1] == ("completed", JOB_SUCCEEDED), events
        assert ("started", common_pb2.JOB_STATE_RUNNING) in events
        done = job(stack, job_id)
        assert done.result == "v3 serves 30% of jobbed's predictions", done
        assert done.attempts == 1 and done.progress == 1.0
        assert done.details["version"] == "v3" and done.details["deployment"] == "jobbed"
        assert versions(stack, d.id)["v3"] == (30, SERVING)
        got = hooks.wait_accepted(2)
        assert sorted(r.event for r in got) == ["completed", "started"]
        assert all(r.signed_by(SECRET) for r in got)
        assert {r.json()["job"]["id"] for r in got} == {job_id}
        until(lambda: sum(w.delivered for w in job(stack, job_id).webhook_deliveries) == 2)
        # another owner sees nothing; the owner lists it
        err = error_of(s.GetRolloutJob, common_pb2.GetJobRequest(id=job_id), stack.meta("bob"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        listed = s.ListRolloutJobs(common_pb2.ListJobsRequest(), metadata=alice).jobs
        assert {job_id, cancelled.id} <= {j.id for j in listed}
        bobs = s.ListRolloutJobs(common_pb2.ListJobsRequest(), metadata=stack.meta("bob"))
        assert len(bobs.jobs) == 0

        # a finished job is skipped: neither a promotion nor a restarted controller (which
        # finds every rollout anew) ends or starts it again
        s.PromoteDeployment(deployer_pb2.PromoteDeploymentRequest(id=d.id), metadata=alice)
        until(lambda: versions(stack, d.id)["v1"] == (0, RETIRED), 60)
        before = replica_pids("jobbed")
        stack.kill_controller()
        stack.start_controller()
        # the new controller has made the deployment its own: new replicas, ready
        until(lambda: replica_pids("jobbed") and not replica_pids("jobbed") & before, 120)
        until(lambda: get(stack, d.id).ready_replicas == 1 and not replica_pids("jobbed") & before)
        after = job(stack, job_id)
        assert (after.state, after.attempts, after.end_time) == (
            JOB_SUCCEEDED,
            1,
            done.end_time,
        )
        assert len(hooks.accepted()) == 2


def test_a_rollout_job_fails_with_the_loaders_reason(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    s, alice = stack.deployer(), stack.meta("alice")
    d = create(stack, deployment("unloadable", replicas=1, model_id=onnx_model_id))
    wait_ready(stack, d.id)
    # the file passes the server's check, then goes bad before a replica loads it
    with controller_paused(stack):
        out = s.RolloutDeployment(rollout(stack, d.id, 40, model_id=onnx_model_id), metadata=alice)
        (stack.storage / "deployments" / d.id / "v2" / "model.onnx").write_bytes(b"not onnx")
    assert watch(stack, out.rollout_job_id)[-1] == ("failed", JOB_FAILED)
    failed = job(stack, out.rollout_job_id)
    assert failed.error.startswith("the model cannot be served: "), failed.error
    assert "onnx" in failed.error.lower() or "protobuf" in failed.error.lower(), failed.error
    assert versions(stack, d.id) == {"v2": (0, FAILED), "v1": (100, SERVING)}
    until(lambda: localities(stack, "unloadable") == {"v1": (100, 1)})
    assert predict(stack, d.id) == "v1"
