"""The trainer end to end: real trainer, tracker and compiler servers, real Dramatiq worker
processes, a Redis of its own and PostgreSQL. Training on digits reaches the accuracy it
should; a worker killed mid-job resumes from its checkpoint without duplicate metrics; a
Redis restart loses no queued job; cancellation, webhooks, search and bad input."""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

from tests.services.conftest import create_pg_database, drop_pg_database
from tests.services.receiver import Receiver
from tests.services.trainer_stack import TrainerStack, make_trainer_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

DIGITS = """
network Digits {
  input: (64,)
  layers:
    Dense(64, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
  train {
    epochs: 8
    batch_size: 32
    validation_split: 0.2
  }
}
"""
# slow enough per epoch (a few hundred ms) to be caught mid-training
SLOW = """
network Slow {
  input: (32,)
  layers:
    Dense(256, "relu")
    Dense(256, "relu")
    Output(4, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
  train { epochs: 6 batch_size: 16 validation_split: 0.1 }
}
"""
SEARCH = """
network Tuned {
  input: (64,)
  layers:
    Dense(HPO(choice(16, 48)), "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=HPO(log_range(0.001, 0.01)))
  train { epochs: 3 batch_size: 64 validation_split: 0.2 }
}
"""
CONV = """
network Conv {
  input: (28, 28, 1)
  layers:
    Conv2D(4, (3,3), "relu")
    Flatten()
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
}
"""
SECRET = "s3cret-webhook-key-0123"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerStack]:
    tmp = tmp_path_factory.mktemp("trainer")
    name, url = asyncio.run(create_pg_database())
    s = make_trainer_stack(tmp, url)
    s.start_redis()
    s.keys = {r: s.sign_token(f"{r}-key", r) for r in ("admin", "user")}
    s.keys["other"] = s.sign_token("other-user", "user")
    for service in ("tracker", "compiler", "trainer"):
        s.start_service(service)
    s.start_trainer_worker()
    try:
        for service in ("tracker", "compiler", "trainer"):
            s.wait_service(service)
        yield s
    finally:
        s.stop_all()
        asyncio.run(drop_pg_database(name))


def auth(stack: TrainerStack, who: str = "user") -> tuple[tuple[str, str], ...]:
    return stack.meta(who)


def trainer(stack: TrainerStack) -> trainer_pb2_grpc.TrainerServiceStub:
    return trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(stack.address_of("trainer")))


def tracker(stack: TrainerStack) -> tracker_pb2_grpc.TrackerServiceStub:
    return tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(stack.address_of("tracker")))


def submit(stack: TrainerStack, source: str = DIGITS, **fields) -> common_pb2.Job:  # type: ignore[no-untyped-def]
    fields.setdefault(
        "dataset", trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    )
    return trainer(stack).SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(source=source, **fields), metadata=auth(stack)
    )


def synthetic(n: int = 3000, classes: int = 4) -> trainer_pb2.DatasetSpec:
    return trainer_pb2.DatasetSpec(
        synthetic=trainer_pb2.SyntheticDataset(num_samples=n, num_classes=classes, seed=1)
    )


def get(stack: TrainerStack, job_id: str) -> common_pb2.Job:
    return trainer(stack).GetTrainingJob(common_pb2.GetJobRequest(id=job_id), metadata=auth(stack))


def wait_state(
    stack: TrainerStack, job_id: str, states: set[int], timeout: float = 240
) -> common_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(stack, job_id)
        if job.state in states:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} stayed {job.state}:\n" + stack.log("worker1")[-3000:])


def wait_epoch(stack: TrainerStack, job_id: str, epoch: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(stack, job_id)
        if "epochs_done" in job.details and job.details["epochs_done"] >= epoch:
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never reached epoch {epoch}")


def history(stack: TrainerStack, run_id: str, key: str) -> list[tracker_pb2.Metric]:
    resp = tracker(stack).GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(run_id=run_id, key=key), metadata=auth(stack)
    )
    return list(resp.metrics)


def code(call, *args, **kwargs) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


# ------------------------------------------------------------------ training
def test_digits_job_streams_progress_reaches_accuracy_and_lands_in_the_tracker(
    stack: TrainerStack,
) -> None:
    job = submit(stack, experiment="digits-e2e")
    assert job.state == common_pb2.JOB_STATE_QUEUED and job.kind == "training"
    events = list(
        trainer(stack).WatchTrainingJob(
            common_pb2.WatchJobRequest(id=job.id), metadata=auth(stack), timeout=240
        )
    )
    types = [e.type for e in events]
    assert types[0] in ("queued", "started") and types[-1] == "completed", types
    # one progress event per finished epoch (those after the watch began), each with a message
    epochs = [e.epoch for e in events if e.type == "progress"]
    assert epochs and epochs == list(range(epochs[0], 9)), epochs
    assert all(e.message and e.metrics for e in events if e.type == "progress")
    last = events[-1].job
    assert last.state == common_pb2.JOB_STATE_SUCCEEDED
    assert last.details["metrics"]["val_accuracy"] > 0.9
    run_id = last.details["run_id"]
    assert last.result == f"runs/{run_id}"
    points = history(stack, run_id, "val_accuracy")
    assert [p.step for p in points] == list(range(1, 9))
    run = tracker(stack).GetRun(tracker_pb2.GetRunRequest(id=run_id), metadata=auth(stack))
    assert run.status == tracker_pb2.RUN_STATUS_FINISHED and run.job_id == job.id
    assert run.params["backend"] == "pytorch" and run.params["epochs"] == "8"
    # what reproducing the run, or feeding its model, needs
    assert run.params["network"] == "Digits" and run.params["optimizer"] == "Adam"
    assert run.params["seed"] == "0" and run.params["split"] == "stratified shuffle"
    assert run.params["dataset.preprocessing"].startswith("pixel intensities divided by 16")
    files = tracker(stack).ListArtifacts(
        tracker_pb2.ListArtifactsRequest(run_id=run_id), metadata=auth(stack)
    )
    names = {a.path for a in files.artifacts}
    assert {"model.neural", "model.onnx"} <= names and any(n.endswith(".pt") for n in names)


def test_tensorflow_backend_trains_with_the_same_metric_names(stack: TrainerStack) -> None:
    job = submit(stack, backend=trainer_pb2.TRAINING_BACKEND_TENSORFLOW, epochs=2)
    done = wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED})
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(done.details["metrics"])
    assert len(history(stack, done.details["run_id"], "loss")) == 2


def test_registry_model_trains_and_unknown_model_is_not_found(stack: TrainerStack) -> None:
    compiler = compiler_pb2_grpc.CompilerServiceStub(
        grpc.insecure_channel(stack.address_of("compiler"))
    )
    model = compiler.Compile(
        compiler_pb2.CompileRequest(source=DIGITS, backend=compiler_pb2.BACKEND_PYTORCH),
        metadata=auth(stack),
    ).model
    t = trainer(stack)
    spec = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    job = t.SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(model_id=model.id, dataset=spec, epochs=1),
        metadata=auth(stack),
    )
    done = wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED})
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    missing = trainer_pb2.SubmitTrainingRequest(model_id="no-such-model", dataset=spec)
    assert code(t.SubmitTraining, missing, metadata=auth(stack)) == grpc.StatusCode.NOT_FOUND
    # another user's model is not theirs to train
    other = code(
        t.SubmitTraining,
        trainer_pb2.SubmitTrainingRequest(model_id=model.id, dataset=spec),
        metadata=auth(stack, "other"),
    )
    assert other == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ bad input
def test_bad_requests_fail_at_submit_time(stack: TrainerStack) -> None:
    t = trainer(stack)
    digits = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    cases = {
        "negative epochs": trainer_pb2.SubmitTrainingRequest(
            source=DIGITS, dataset=digits, epochs=-1
        ),
        "shape mismatch": trainer_pb2.SubmitTrainingRequest(source=CONV, dataset=digits),
        "no dataset": trainer_pb2.SubmitTrainingRequest(source=DIGITS),
        "bad program": trainer_pb2.SubmitTrainingRequest(
            source="network X { input: (4,) layers: Dense(-1) }", dataset=digits
        ),
        "bad split": trainer_pb2.SubmitTrainingRequest(
            source=DIGITS, dataset=digits, validation_split=1.5
        ),
        "bad webhook": trainer_pb2.SubmitTrainingRequest(
            source=DIGITS,
            dataset=digits,
            webhooks=[common_pb2.Webhook(url="file:///etc/passwd", secret=SECRET)],
        ),
    }
    for what, req in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            t.SubmitTraining(req, metadata=auth(stack))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
    with pytest.raises(grpc.RpcError) as info:
        t.SubmitTraining(cases["shape mismatch"], metadata=auth(stack))
    assert "(28, 28, 1)" in info.value.details()
    assert code(t.SubmitTraining, cases["no dataset"]) == grpc.StatusCode.UNAUTHENTICATED


def upload(stack: TrainerStack, name: str, data: bytes, who: str = "user") -> trainer_pb2.Dataset:
    def chunks() -> Iterator[common_pb2.Chunk]:
        step = 64 * 1024
        for off in range(0, len(data), step):
            first = off == 0
            yield common_pb2.Chunk(
                data=data[off : off + step],
                offset=off,
                name=name if first else "",
                total_size=len(data) if first else 0,
            )
        yield common_pb2.Chunk(offset=len(data), sha256=hashlib.sha256(data).hexdigest())

    return trainer(stack).UploadDataset(chunks(), metadata=auth(stack, who))


def test_uploaded_npz_trains_and_oversized_upload_is_refused(stack: TrainerStack) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 64)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + 2 * (x[:, 1] > 0).astype("int64")
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    ds = upload(stack, "quadrants.npz", buf.getvalue())
    assert list(ds.shapes["x"].dims) == [400, 64]
    four = DIGITS.replace("Output(10", "Output(4")
    job = submit(stack, four, dataset=trainer_pb2.DatasetSpec(dataset_id=ds.id), epochs=2)
    done = wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED})
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    # wrong class count for this dataset: the worker fails it once, with the reason
    job = submit(stack, DIGITS, dataset=trainer_pb2.DatasetSpec(dataset_id=ds.id), epochs=1)
    done = wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED})
    assert done.state == common_pb2.JOB_STATE_FAILED and "4 classes" in done.error
    assert done.attempts == 1
    big = b"1,2\n" * (1024 * 1024)  # over the stack's 3 MB upload limit
    with pytest.raises(grpc.RpcError) as info:
        upload(stack, "big.csv", big)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (
        code(
            trainer(stack).GetDataset,
            trainer_pb2.GetDatasetRequest(id=ds.id),
            metadata=auth(stack, "other"),
        )
        == grpc.StatusCode.NOT_FOUND
    )


# ------------------------------------------------------------------ cancellation
def test_cancel_queued_and_running_jobs(stack: TrainerStack) -> None:
    t = trainer(stack)
    running = submit(stack, SLOW, dataset=synthetic(), epochs=200)
    queued = submit(stack, SLOW, dataset=synthetic(), epochs=1)
    wait_epoch(stack, running.id, 1)
    job = t.CancelTrainingJob(common_pb2.CancelJobRequest(id=queued.id), metadata=auth(stack))
    assert job.state == common_pb2.JOB_STATE_CANCELLED
    asked = time.monotonic()
    t.CancelTrainingJob(common_pb2.CancelJobRequest(id=running.id), metadata=auth(stack))
    done = wait_state(stack, running.id, {common_pb2.JOB_STATE_CANCELLED}, timeout=30)
    assert time.monotonic() - asked < 10
    run = tracker(stack).GetRun(
        tracker_pb2.GetRunRequest(id=done.details["run_id"]), metadata=auth(stack)
    )
    assert run.status == tracker_pb2.RUN_STATUS_KILLED
    assert (
        code(t.CancelTrainingJob, common_pb2.CancelJobRequest(id=running.id), metadata=auth(stack))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


# ------------------------------------------------------------------ faults
def test_sigkilled_worker_job_resumes_from_checkpoint_without_duplicate_metrics(
    stack: TrainerStack,
) -> None:
    job = submit(stack, SLOW, dataset=synthetic(6000), epochs=6)
    wait_epoch(stack, job.id, 2)
    victim = next(n for n in stack.procs if n.startswith("worker"))
    stack.kill(victim)
    stack.start_trainer_worker()
    done = wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED})
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.attempts == 2
    assert done.details["resumed_from"] >= 2
    steps = [p.step for p in history(stack, done.details["run_id"], "loss")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_redis_restart_loses_no_queued_job(stack: TrainerStack) -> None:
    for name in [n for n in stack.procs if n.startswith("worker")]:
        stack.stop(name)
    jobs = [submit(stack, epochs=1) for _ in range(3)]
    stack.stop("redis")
    stack.start_redis()
    stack.start_trainer_worker()
    for job in jobs:
        done = wait_state(
            stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED}
        )
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    # the server itself reconnects: a new job after the restart runs too
    done = wait_state(stack, submit(stack, epochs=1).id, {common_pb2.JOB_STATE_SUCCEEDED})
    assert done.attempts == 1


def test_list_workers_shows_live_workers_and_a_killed_one_as_dead(stack: TrainerStack) -> None:
    def listed(include_dead: bool = False) -> list[trainer_pb2.Worker]:
        return list(
            trainer(stack)
            .ListWorkers(
                trainer_pb2.ListWorkersRequest(include_dead=include_dead),
                metadata=auth(stack, "admin"),
            )
            .workers
        )

    def live() -> set[int]:
        return {w.pid for w in listed() if w.alive and "training" in w.queues}

    before = live()
    extra = stack.start_trainer_worker()  # a worker of this test's own, killed below
    until(lambda: len(live() - before) == 1, 60, "the new worker to beat")
    (pid,) = live() - before
    stack.kill(extra)
    # it stops beating: no longer listed, and listed as dead when asked for
    until(lambda: pid not in live(), 60, "the killed worker to miss its beats")
    assert any(w.pid == pid and not w.alive for w in listed(include_dead=True))
    assert all(w.alive for w in listed())
    assert (
        code(trainer(stack).ListWorkers, trainer_pb2.ListWorkersRequest(), metadata=auth(stack))
        == grpc.StatusCode.PERMISSION_DENIED
    )


# ------------------------------------------------------------------ webhooks
def test_webhook_failing_twice_gets_one_accepted_delivery_per_event(stack: TrainerStack) -> None:
    with Receiver(fail_first=2) as receiver:
        hook = common_pb2.Webhook(url=receiver.url, secret=SECRET, events=["started", "completed"])
        job = submit(stack, epochs=1, webhooks=[hook])
        wait_state(stack, job.id, {common_pb2.JOB_STATE_SUCCEEDED})
        accepted = receiver.wait_accepted(2)
        assert sorted(r.event for r in accepted) == ["completed", "started"]
        assert all(r.signed_by(SECRET) for r in receiver.received)
    got = get(stack, job.id)
    delivered = [d for d in got.webhook_deliveries if d.delivered]
    assert sorted(d.event for d in delivered) == ["completed", "started"]
    assert max(d.attempt for d in got.webhook_deliveries) >= 3
    assert all(SECRET not in str(d) for d in got.webhook_deliveries)


# ------------------------------------------------------------------ search
def test_search_runs_each_trial_in_the_tracker_and_reports_the_best(stack: TrainerStack) -> None:
    t = trainer(stack)
    job = t.SubmitSearch(
        trainer_pb2.SubmitSearchRequest(
            source=SEARCH,
            dataset=trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS),
            n_trials=3,
            objective="val_accuracy",
            experiment="search-e2e",
        ),
        metadata=auth(stack),
    )
    events = list(
        t.WatchSearchJob(common_pb2.WatchJobRequest(id=job.id), metadata=auth(stack), timeout=300)
    )
    final = events[-1].job
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    trials = final.details["trials"]
    assert len(trials) == 3 and len({tr["run_id"] for tr in trials}) == 3
    best = max(trials, key=lambda tr: tr["value"])
    assert final.details["best_run_id"] == best["run_id"]
    assert len(final.details["best_values"]) == 2
    assert sum(1 for e in events if e.type == "progress" and "trial" in e.message) >= 3
    assert (
        code(t.GetTrainingJob, common_pb2.GetJobRequest(id=job.id), metadata=auth(stack))
        == grpc.StatusCode.NOT_FOUND
    )
