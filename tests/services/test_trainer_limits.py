"""One request cannot take a training worker: a network over the parameter limit, a training
whose memory estimate is over the worker's budget, and generated data over its size limit are
refused at submit with the limit named (INVALID_ARGUMENT), before anything is queued."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from neural.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from neural_dsl import Limits, parse
from neural_dsl.limits import training_bytes

from services.trainer import plan
from services.trainer.plan import OverLimit, TrainingRequest
from tests.services.stack import Stack, pg_stack

REDIS_DB = 5
HUGE = """
network Huge {
  input: (70000,)
  layers:
    Dense(70000)
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.001)
}
"""
WIDE = """
network Wide {
  input: (2000,)
  layers:
    Dense(2000, "relu")
    Output(4, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
  train { batch_size: BATCH }
}
"""
SMALL = """
network Small {
  input: (64,)
  layers:
    Dense(32, "relu")
    Output(4, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
}
"""


def _synthetic(n: int) -> trainer_pb2.DatasetSpec:
    return trainer_pb2.DatasetSpec(
        synthetic=trainer_pb2.SyntheticDataset(num_samples=n, num_classes=4, seed=1)
    )


def _request(source: str, n: int = 100, **fields: object) -> TrainingRequest:
    dataset = {"synthetic": {"num_samples": n, "num_classes": 4, "seed": 1}}
    return TrainingRequest(source=source, backend="pytorch", dataset=dataset, **fields)  # type: ignore[arg-type]


def test_the_memory_estimate_counts_weights_optimizer_and_batch_activations() -> None:
    network = parse(WIDE.replace("BATCH", "32")).network
    params = 2000 * 2000 + 2000 + 2000 * 4 + 4
    # weights, gradients, two Adam moments; each layer's output for a batch, forward and back
    assert training_bytes(params, 2004, 32) == 4 * (4 * params + 2 * 2004 * 32)
    need = training_bytes(params, 2004, 32)
    plan.check_budget(network, _request(WIDE), (2000,), Limits(max_training_bytes=need))
    with pytest.raises(OverLimit) as info:
        plan.check_budget(network, _request(WIDE), (2000,), Limits(max_training_bytes=need - 1))
    assert info.value.field == "source"
    assert "NEURAL_TRAINING_MEMORY_BYTES" in str(info.value)


def test_the_estimate_uses_the_batch_size_the_training_will_use() -> None:
    declared = parse(WIDE.replace("BATCH", "4096")).network
    params = 2000 * 2000 + 2000 + 2000 * 4 + 4
    budget = Limits(max_training_bytes=training_bytes(params, 2004, 1024))
    with pytest.raises(OverLimit) as info:  # the program's own batch_size: 4096
        plan.check_budget(declared, _request(WIDE), (2000,), budget)
    assert "batches of 4096" in str(info.value)
    # the request's batch_size overrides the program's
    plan.check_budget(declared, _request(WIDE, batch_size=512), (2000,), budget)
    # a searched batch size is budgeted at the largest the search may pick
    searched = parse(WIDE.replace("BATCH", "HPO(choice(16, 2048))")).network
    with pytest.raises(OverLimit) as info:
        plan.check_budget(searched, _request(WIDE), (2000,), budget)
    assert "batches of 2048" in str(info.value)
    chosen = _request(WIDE, hparams={"train.batch_size": 16})
    plan.check_budget(searched, chosen, (2000,), budget)


def test_generated_data_over_its_limit_names_the_setting() -> None:
    network = parse(SMALL).network
    limits = Limits(max_dataset_values=64 * 1000)
    plan.check_budget(network, _request(SMALL, n=1000), (64,), limits)
    with pytest.raises(OverLimit) as info:
        plan.check_budget(network, _request(SMALL, n=1001), (64,), limits)
    assert info.value.field == "dataset.synthetic.num_samples"
    assert "64,064 values" in str(info.value) and "NEURAL_MAX_DATASET_VALUES" in str(info.value)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "NEURAL_AUTH_DISABLED": "1",
        "NEURAL_TRAINING_MEMORY_BYTES": str(16 << 20),
        "NEURAL_MAX_DATASET_VALUES": "1000000",
    }
    tmp = tmp_path_factory.mktemp("trainer-limits")
    with pg_stack(tmp, REDIS_DB, "trainer", env=env) as s:
        yield s


@pytest.mark.e2e
def test_requests_over_the_limits_are_refused_at_submit(stack: Stack) -> None:
    t = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(stack.address))
    cases = {
        "100,000,000 parameters": trainer_pb2.SubmitTrainingRequest(
            source=HUGE, dataset=_synthetic(100)
        ),
        "NEURAL_TRAINING_MEMORY_BYTES": trainer_pb2.SubmitTrainingRequest(
            source=WIDE.replace("BATCH", "32"), dataset=_synthetic(100)
        ),
        "NEURAL_MAX_DATASET_VALUES": trainer_pb2.SubmitTrainingRequest(
            source=SMALL, dataset=_synthetic(100_000)
        ),
    }
    for named, request in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            t.SubmitTraining(request, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, named
        assert named in (info.value.details() or ""), info.value.details()
    search = trainer_pb2.SubmitSearchRequest(
        source=HUGE.replace("Dense(70000)", "Dense(HPO(choice(60000, 70000)))"),
        dataset=_synthetic(100),
        n_trials=2,
        objective="val_accuracy",
    )
    with pytest.raises(grpc.RpcError) as info:
        t.SubmitSearch(search, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100,000,000 parameters" in (info.value.details() or "")
    assert not t.ListTrainingJobs(common_pb2.ListJobsRequest(), timeout=60).jobs
    # within the limits, the same kind of request is queued
    job = t.SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(source=SMALL, dataset=_synthetic(1000)), timeout=60
    )
    assert job.state == common_pb2.JOB_STATE_QUEUED
