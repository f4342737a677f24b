"""Scale to zero as real processes (the stack of test_deployer_e2e, a 2 s cooldown): a
deployment with min_replicas 0 loses its last replica once no prediction has come for a
cooldown, stays READY with no endpoint, and the next Predict wakes it: it waits for a replica
to become ready and answers, and the deployment goes back to zero afterwards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from neural.v1 import deployer_pb2

from tests.deployer.test_deployer_e2e import (  # noqa: F401 (fixtures)
    READY,
    DeployerStack,
    cluster_ports,
    create,
    get,
    in_process,
    instances,
    onnx_model_id,
    replica_pids,
    rows,
    stack,
    wait_ready,
)
from tests.waiting import until

pytestmark = pytest.mark.e2e


def asleep(s: DeployerStack, deployment_id: str, name: str) -> bool:
    d = get(s, deployment_id)
    return (
        d.replicas == 0
        and d.ready_replicas == 0
        and not replica_pids(name)
        and cluster_ports(s, name) == []
    )


def test_a_deployment_scales_to_zero_and_the_next_prediction_wakes_it(
    stack: DeployerStack,  # noqa: F811
    onnx_model_id: str,  # noqa: F811
) -> None:
    d = deployer_pb2.Deployment(
        name="napping", model_id=onnx_model_id, replicas=1, min_replicas=0, max_replicas=2
    )
    created = create(stack, d)
    assert (created.min_replicas, created.max_replicas, created.replicas) == (0, 2, 1)
    wait_ready(stack, created.id, 1)
    until(lambda: asleep(stack, created.id, "napping"), 120, "scaled to zero")
    assert get(stack, created.id).state == READY  # READY with none: the next call wakes it

    x = rows(3)
    model = Path(stack.env["NEURAL_STORAGE_DIR"]) / "deployments" / created.id / "v1" / "model.onnx"
    r = stack.deployer().Predict(
        deployer_pb2.PredictRequest(id=created.id, instances=instances(x)),
        metadata=stack.meta("alice"),
        timeout=120,
    )
    assert r.model_version == "v1"
    got = np.asarray([list(p) for p in r.predictions], dtype=np.float32)
    np.testing.assert_array_equal(got, in_process(model, x))
    # no more predictions: back to zero after the cooldown
    until(lambda: asleep(stack, created.id, "napping"), 120, "scaled to zero again")
