"""The controller's failure paths, as real processes (the stack of test_deployer_e2e): a model
that stops loading fails its deployment with the loader's reason; replicas die with a killed
controller and come back with the next one; a successor kills the replicas a dead controller
left; SIGTERM drains and stops every replica."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from typing import Any

import grpc
import pytest
import yaml
from neural.v1 import deployer_pb2
from service_kit import db

from services.deployer.store import R_READY, DeployerStore, Replica, new_id, now
from tests.deployer.test_deployer_e2e import (  # noqa: F401 (fixtures)
    DeployerStack,
    cluster_ports,
    create,
    deployment,
    error_of,
    get,
    instances,
    onnx_model_id,
    replica_pids,
    rows,
    stack,
    wait_ready,
)
from tests.waiting import until

pytestmark = pytest.mark.e2e


def cluster_version(s: DeployerStack) -> int:
    return int(yaml.safe_load(s.cds.read_text())["version_info"])


def test_a_model_that_stops_loading_fails_the_deployment(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = create(stack, deployment("spoiled", model_id=onnx_model_id))
    wait_ready(stack, d.id)
    (stack.storage / "deployments" / d.id / "v1" / "model.onnx").write_bytes(b"not onnx")
    [pid] = replica_pids("spoiled")
    os.kill(pid, signal.SIGKILL)

    def failed() -> Any:
        found = get(stack, d.id)
        return found if found.state == deployer_pb2.DEPLOYMENT_STATE_FAILED else None

    until(failed, 60, "FAILED\n" + stack.log("controller"))
    found = get(stack, d.id)
    assert "the model cannot be served" in found.error and found.ready_replicas == 0
    assert found.versions[0].state == deployer_pb2.DEPLOYMENT_VERSION_STATE_FAILED
    assert found.endpoint == ""
    until(lambda: replica_pids("spoiled") == set())
    until(lambda: cluster_ports(stack, "spoiled") == [])
    err = error_of(
        stack.deployer().Predict,
        deployer_pb2.PredictRequest(id=d.id, instances=instances(rows(1))),
        stack.meta("alice"),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "FAILED" in err.details()
    err = error_of(
        stack.deployer().ScaleDeployment,
        deployer_pb2.ScaleDeploymentRequest(id=d.id, replicas=2),
        stack.meta("alice"),
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # a failed deployment can still be deleted
    stack.deployer().DeleteDeployment(
        deployer_pb2.DeleteDeploymentRequest(id=d.id), metadata=stack.meta("alice")
    )


def test_replicas_die_with_the_controller_and_return_with_the_next(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = create(stack, deployment("phoenix", replicas=2, model_id=onnx_model_id))
    wait_ready(stack, d.id, 2)
    before = replica_pids("phoenix")
    assert len(before) == 2
    stack.kill_controller()
    until(lambda: replica_pids("phoenix") == set(), 30, "replicas gone with the controller")
    left = cluster_version(stack)
    stack.start_controller()
    # the status and the file the dead controller left are stale until the new one writes
    until(lambda: cluster_version(stack) > left, 60, "the new controller's first file")
    until(lambda: len(cluster_ports(stack, "phoenix") or []) == 2, 120, "replicas serving")
    wait_ready(stack, d.id, 2)
    after = replica_pids("phoenix")
    assert len(after) == 2 and not after & before


def test_a_successor_kills_the_replicas_a_dead_controller_left(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = create(stack, deployment("orphaned", replicas=0, model_id=onnx_model_id))
    stack.stop("controller")
    # a replica its controller did not take along (as if the controller's kernel-side death
    # signal were lost), recorded in the database as that controller left it
    model = stack.storage / "deployments" / d.id / "v1" / "model.onnx"
    orphan = subprocess.Popen(
        [
            *(sys.executable, "-m", "services.deployer.replica", "--model", str(model)),
            *("--model-name", "orphaned", "--model-version", "v1", "--port", "0"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=stack.env,
        start_new_session=True,
    )
    try:
        assert orphan.stdout is not None and orphan.stdout.readline().startswith(b"PORT ")

        async def record() -> None:
            store = DeployerStore(db.make_engine(stack.env["NEURAL_DATABASE_URL"]))
            try:
                version = (await store.get(d.id, None)).versions[0]
                await store.add_replica(
                    Replica(
                        new_id(), d.id, version.id, "dead", orphan.pid, 1, R_READY, now(), now()
                    )
                )
            finally:
                await store.close()

        asyncio.run(record())
        stack.start_controller()
        assert orphan.wait(60) == -signal.SIGKILL
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_sigterm_drains_and_stops_every_replica(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = create(stack, deployment("drained", replicas=2, model_id=onnx_model_id))
    wait_ready(stack, d.id, 2)
    assert stack.stop("controller") == 0
    assert replica_pids("drained") == set()
    found = get(stack, d.id)
    assert (found.state, found.ready_replicas) == (deployer_pb2.DEPLOYMENT_STATE_READY, 0)
    err = error_of(
        stack.deployer().Predict,
        deployer_pb2.PredictRequest(id=d.id, instances=instances(rows(1))),
        stack.meta("alice"),
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert cluster_ports(stack, "drained") == []
    stack.start_controller()
    wait_ready(stack, d.id, 2)


def test_manifests_render_the_main_version(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = create(stack, deployment("rendered", replicas=0, model_id=onnx_model_id))
    r = stack.deployer().RenderManifests(
        deployer_pb2.RenderManifestsRequest(id=d.id), metadata=stack.meta("alice")
    )
    docs = [doc for doc in yaml.safe_load_all(r.yaml) if doc]
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= kinds
    assert f"deployments/{d.id}/v1/model.onnx" in r.yaml
    err = error_of(
        stack.deployer().RenderManifests,
        deployer_pb2.RenderManifestsRequest(id=d.id),
        stack.meta("bob"),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
