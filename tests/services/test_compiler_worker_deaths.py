"""A compile job whose worker dies during every attempt ends FAILED with the reason, once:
real server and worker processes, the worker SIGKILLed (its whole process group) while it
exports to ONNX, as often as the job has attempts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc

from services.compiler.actors import MAX_RETRIES
from tests.services.conftest import REDIS_PORT
from tests.services.receiver import Receiver
from tests.services.stack import Stack, pg_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 12
SECRET = "worker-deaths-secret-0123"
# an ONNX export: seconds of torch import and export in a fresh worker, time to be killed in
BIG = """
network Big {
  input: (64, 64, 3)
  layers:
    Conv2D(32, (3,3), "relu")
    Conv2D(32, (3,3), "relu")
    MaxPooling2D((2,2))
    Conv2D(64, (3,3), "relu")
    Flatten()
    Dense(256, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
}
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    env = {
        # a dead worker's message goes back to the queue within seconds
        "NEURAL_BROKER_HEARTBEAT_TIMEOUT_MS": "1500",
        "NEURAL_BROKER_MAINTENANCE_CHANCE": "500000",
        "NEURAL_WEBHOOK_MIN_BACKOFF_MS": "100",
        "dramatiq_worker_timeout": "100",
    }
    keys = {"user": ("user-key", "user")}
    with pg_stack(tmp_path, REDIS_DB, env=env, keys=keys, worker=True, own_group=True) as s:
        yield s


def test_a_job_whose_worker_dies_every_attempt_fails_once_with_the_reason(stack: Stack) -> None:
    s = compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address))
    auth = stack.meta("user")

    def job() -> common_pb2.Job:
        return s.GetCompileJob(common_pb2.GetJobRequest(id=submitted.id), metadata=auth)

    with Receiver() as rx:
        hook = common_pb2.Webhook(url=rx.url, secret=SECRET, events=["failed"])
        submitted = s.SubmitCompile(
            compiler_pb2.CompileRequest(
                source=BIG, backend=compiler_pb2.BACKEND_ONNX, webhooks=[hook]
            ),
            metadata=auth,
        )
        for attempt in range(1, MAX_RETRIES + 2):
            until(
                lambda a=attempt: (
                    (j := job()).state == common_pb2.JOB_STATE_RUNNING and j.attempts == a
                ),
                90,
                f"attempt {attempt} running:\n{stack.log('worker')}",
            )
            stack.kill_group("worker")
            stack.start_worker(own_group=True)
        until(
            lambda: job().state != common_pb2.JOB_STATE_RUNNING,
            90,
            f"the job to end:\n{stack.log('worker')}",
        )
        done = job()
        assert done.state == common_pb2.JOB_STATE_FAILED, done
        assert done.attempts == MAX_RETRIES + 1
        assert done.error.startswith(
            f"gave up after {MAX_RETRIES + 1} attempts: the worker stopped during each"
        )
        # nothing is left to run: every compile message and webhook delivery was acknowledged
        queues = redis.Redis(port=REDIS_PORT, db=REDIS_DB)
        until(
            lambda: (
                not any(
                    queues.hlen(f"dramatiq:{q}{dq}.msgs")
                    for q in ("compile", "compiler.webhooks")
                    for dq in ("", ".DQ")
                )
            ),
            60,
            "the queues to drain",
        )
        accepted = rx.wait_accepted(1, timeout=30)
    assert [r.event for r in accepted] == ["failed"]
    assert accepted[0].json()["message"] == done.error
    deliveries = [d for d in job().webhook_deliveries if d.event == "failed" and d.delivered]
    assert len(deliveries) == 1
    events = list(
        s.WatchCompileJob(common_pb2.WatchJobRequest(id=submitted.id), metadata=auth, timeout=30)
    )
    assert [(e.type, e.message) for e in events] == [("failed", done.error)]
    # the stack still compiles: a fresh job on the restarted worker succeeds
    ok = s.SubmitCompile(
        compiler_pb2.CompileRequest(source=BIG, backend=compiler_pb2.BACKEND_PYTORCH),
        metadata=auth,
    )
    final = list(
        s.WatchCompileJob(common_pb2.WatchJobRequest(id=ok.id), metadata=auth, timeout=120)
    )[-1]
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.job.error
