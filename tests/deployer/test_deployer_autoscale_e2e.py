"""Autoscaling as real processes (the stack of test_deployer_e2e, 2 predictions in flight per
replica, a 2 s cooldown): concurrent predictions raise the replicas up to max_replicas, and
once they stop, the replicas fall back to min_replicas, with no failed request."""

from __future__ import annotations

import threading

import grpc
import pytest
from neural.v1 import deployer_pb2, deployer_pb2_grpc

from tests.deployer.test_deployer_e2e import (  # noqa: F401 (fixtures)
    DeployerStack,
    create,
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


def test_replicas_follow_the_predictions_in_flight(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = deployer_pb2.Deployment(
        name="elastic", model_id=onnx_model_id, replicas=1, min_replicas=1, max_replicas=3
    )
    created = create(stack, d)
    assert (created.min_replicas, created.max_replicas, created.replicas) == (1, 3, 1)
    wait_ready(stack, created.id, 1)
    with pytest.raises(grpc.RpcError) as info:
        stack.deployer().ScaleDeployment(
            deployer_pb2.ScaleDeploymentRequest(id=created.id, replicas=5),
            metadata=stack.meta("alice"),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_replicas" in info.value.details()

    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def load() -> None:
        with grpc.insecure_channel(stack.address_of("deployer")) as channel:
            stub = deployer_pb2_grpc.DeployerServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.Predict(
                        deployer_pb2.PredictRequest(id=created.id, instances=instances(rows(64))),
                        metadata=stack.meta("alice"),
                        timeout=30,
                    )
                    answered[0] += 1
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        until(lambda: get(stack, created.id).replicas == 3, 60, "scaled up to max_replicas")
        wait_ready(stack, created.id, 3)
        assert len(replica_pids("elastic")) == 3
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert failures == [] and answered[0] > 0
    until(lambda: get(stack, created.id).replicas == 1, 60, "back to min_replicas")
    wait_ready(stack, created.id, 1)
    until(lambda: len(replica_pids("elastic")) == 1, 60)
