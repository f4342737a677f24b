"""The client's `Run` against the real tracker through the real gateway (Envoy, authz and the
rate limiter in front): 10,000 points logged from a loop arrive in order with their steps and
timestamps; a process that exits without closing its run still delivers every point and ends
the run; a key that may not write sees the refusal raised by its next call."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import grpc
import pytest
from neural.v1 import tracker_pb2
from neural_client import Client, NeuralError, Run

from tests.conftest import ROOT
from tests.gateway.harness import Platform, start_platform

pytestmark = pytest.mark.e2e

REDIS_DB = 15
SERVERS = {
    "tracker": "services.tracker",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("client-run")
    with start_platform(tmp, SERVERS, REDIS_DB, {"user": "user", "viewer": "viewer"}) as running:
        yield running


@pytest.fixture
def client(platform: Platform) -> Iterator[Client]:
    with Client(platform.gateway.address, platform.keys["user"]) as c:
        yield c


def test_ten_thousand_points_from_a_loop_arrive_in_order(client: Client) -> None:
    before = time.time()
    with client.start_run("client-e2e", name="loop") as run:
        run.log_params({"lr": 0.01, "batch_size": 32})
        for i in range(10_000):
            run.log_metric("train/loss", 1.0 / (i + 1), step=i)
            if i % 100 == 99:
                run.log_metrics({"val/loss": 2.0 / (i + 1), "val/acc": i / 10_000})
    after = time.time()
    assert (run.sent, run.lost, run.dropped, run.pending) == (10_200, 0, 0, 0)

    points = client.metric_history(run.id, "train/loss")
    assert [(p.step, p.value) for p in points] == [(i, 1.0 / (i + 1)) for i in range(10_000)]
    stamps = [p.timestamp.ToMilliseconds() for p in points]
    assert stamps == sorted(stamps)
    assert before * 1000 - 1 <= stamps[0] and stamps[-1] <= after * 1000 + 1
    acc = client.metric_history(run.id, "val/acc")
    assert [(p.step, p.value) for p in acc] == [(s, (100 * s + 99) / 10_000) for s in range(100)]

    stored = client.get_run(run.id)
    assert stored.status == tracker_pb2.RUN_STATUS_FINISHED
    assert dict(stored.params) == {"lr": "0.01", "batch_size": "32"}
    assert stored.experiment_id == client.experiment_id("client-e2e")


def test_a_process_that_exits_without_closing_still_delivers_and_ends_its_run(
    platform: Platform, client: Client
) -> None:
    script = textwrap.dedent(
        """
        import sys
        from neural_client import Client

        run = Client(sys.argv[1], sys.argv[2]).start_run("client-e2e", name="at-exit")
        print(run.id, flush=True)
        for i in range(3000):
            run.log_metric("loss", 0.5, step=i)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, platform.gateway.address, platform.keys["user"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    assert [p.step for p in client.metric_history(run_id, "loss")] == list(range(3000))
    assert client.get_run(run_id).status == tracker_pb2.RUN_STATUS_FINISHED


def test_a_refused_stream_is_raised_by_the_next_call(platform: Platform, client: Client) -> None:
    created = client.start_run("client-e2e", name="read-only")
    with Client(platform.gateway.address, platform.keys["viewer"]) as viewer:
        # The gateway refuses a viewer's StreamMetrics before the tracker sees it.
        run = Run(viewer.tracker, viewer.metadata, created.info)
        run.log_metric("loss", 0.5)
        with pytest.raises(NeuralError, match="1 metric point") as raised:
            run.flush()
        assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert (run.lost, run.errors) == (1, 1)
        run.close()
    assert client.metric_history(created.id, "loss") == []
