"""The client's `Run` without a server: a fake tracker stub records what the background sender
sends. Order, steps and timestamps; batches of at most 1000; the bounded buffer (block, then
raise and count); failures raised by the next call and counted; flush on close and at exit;
several threads logging at once; `Client.start_run` finding or creating the experiment."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from neural.v1 import tracker_pb2
from neural_client import Client, NeuralError, Run
from neural_client import run as run_module

from tests.waiting import until

pytestmark = pytest.mark.unit

MD = (("authorization", "Bearer nk_test"),)


class Refused(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class FakeTracker:
    """The TrackerService stub's calls a Run makes. StreamMetrics reads the next message only
    while `gate` is set (as gRPC's flow control would stop reading), raises the next of
    `failures` instead of storing a message, and answers `short` fewer points than stored."""

    def __init__(self) -> None:
        self.batches: list[tracker_pb2.LogMetricsRequest] = []
        self.streams = 0
        self.updates: list[tracker_pb2.UpdateRunRequest] = []
        self.params: list[dict[str, str]] = []
        self.failures: list[BaseException] = []
        self.short = 0
        self.gate = threading.Event()
        self.gate.set()

    def StreamMetrics(
        self, requests: Iterator[Any], metadata: Any, timeout: float
    ) -> tracker_pb2.StreamMetricsResponse:
        assert metadata == MD and timeout > 0
        self.streams += 1
        stored = 0
        while self.gate.wait(30):
            request = next(requests, None)
            if request is None:
                return tracker_pb2.StreamMetricsResponse(metrics_logged=stored - self.short)
            if self.failures:
                raise self.failures.pop(0)
            self.batches.append(request)
            stored += len(request.metrics)
        raise AssertionError("the gate stayed closed")

    def UpdateRun(self, request: Any, metadata: Any, timeout: float) -> tracker_pb2.Run:
        self.updates.append(request)
        return tracker_pb2.Run(id=request.run.id, status=request.run.status)

    def LogParams(self, request: Any, metadata: Any, timeout: float) -> empty_pb2.Empty:
        self.params.append(dict(request.params))
        return empty_pb2.Empty()

    def points(self, key: str | None = None) -> list[tuple[str, float, int, int]]:
        return [
            (m.key, m.value, m.step, m.timestamp.seconds * 1000 + m.timestamp.nanos // 10**6)
            for b in self.batches
            for m in b.metrics
            if key is None or m.key == key
        ]


@pytest.fixture
def tracker() -> FakeTracker:
    return FakeTracker()


@pytest.fixture
def make_run(tracker: FakeTracker) -> Iterator[Any]:
    made: list[Run] = []

    def make(**options: Any) -> Run:
        made.append(Run(tracker, MD, tracker_pb2.Run(id="run-1", name="r"), **options))
        return made[-1]

    yield make
    tracker.gate.set()
    for run in made:
        with contextlib.suppress(NeuralError):
            run.close(10)


def test_points_keep_order_step_and_timestamp_and_go_in_batches_of_1000(
    tracker: FakeTracker, make_run: Any
) -> None:
    run = make_run()
    before = time.time_ns() // 10**6
    for i in range(2500):
        run.log_metric("loss", 1.0 / (i + 1), step=10 * i)
        run.log_metric("acc", i / 2500)  # step: the key's last + 1
    run.log_metric("lr", 0.1, step=7, timestamp=1_700_000_000.123)
    run.close()
    after = time.time_ns() // 10**6
    assert all(0 < len(b.metrics) <= 1000 for b in tracker.batches)
    assert {b.run_id for b in tracker.batches} == {"run-1"}
    loss = tracker.points("loss")
    assert [(v, s) for _, v, s, _ in loss] == [(1.0 / (i + 1), 10 * i) for i in range(2500)]
    assert [s for _, _, s, _ in tracker.points("acc")] == list(range(2500))
    stamps = [t for _, _, _, t in loss]
    assert stamps == sorted(stamps) and before <= stamps[0] and stamps[-1] <= after
    assert tracker.points("lr") == [("lr", 0.1, 7, 1_700_000_000_123)]
    assert (run.sent, run.lost, run.pending) == (5001, 0, 0)


def test_a_full_batch_goes_without_waiting_for_the_interval(
    tracker: FakeTracker, make_run: Any
) -> None:
    run = make_run(flush_interval=3600)
    for i in range(1000):
        run.log_metric("loss", 0.5, step=i)
    until(lambda: len(tracker.points()) == 1000, 10, "the first 1000 points sent")
    for i in range(1000, 1005):
        run.log_metric("loss", 0.5, step=i)
    assert run.pending == 1005  # sent, but not confirmed: the stream is still open
    run.flush()
    assert [len(b.metrics) for b in tracker.batches] == [1000, 5]
    assert (tracker.streams, run.sent, run.pending) == (1, 1005, 0)


def test_a_stream_ends_by_itself_so_its_answer_confirms_the_points(
    tracker: FakeTracker, make_run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "STREAM_SECONDS", 0.05)
    run = make_run(flush_interval=0.01)
    run.log_metric("loss", 0.5)
    until(lambda: run.sent == 1, 10, "the point confirmed without a flush")
    run.log_metric("loss", 0.4)
    until(lambda: run.sent == 2, 10, "the next point, in a stream of its own")
    assert tracker.streams == 2


def test_the_trackers_count_is_checked(tracker: FakeTracker, make_run: Any) -> None:
    tracker.short = 1
    run = make_run()
    run.log_metrics({"a": 1.0, "b": 2.0})
    with pytest.raises(NeuralError, match=r"1 metric point.*stored 1 of 2"):
        run.flush()
    assert (run.sent, run.lost) == (1, 1)


def test_log_metrics_queues_one_point_per_key_at_one_moment(
    tracker: FakeTracker, make_run: Any
) -> None:
    run = make_run()
    run.log_metrics({"loss": 0.5, "acc": 0.9})
    run.log_metrics({"loss": 0.4, "acc": 0.95}, step=10)
    run.flush()
    points = tracker.points()
    assert [(k, v, s) for k, v, s, _ in points] == [
        ("loss", 0.5, 0), ("acc", 0.9, 0), ("loss", 0.4, 10), ("acc", 0.95, 10)
    ]  # fmt: skip
    assert points[0][3] == points[1][3]


@pytest.mark.parametrize(
    ("key", "value", "step", "timestamp"),
    [
        ("loss", float("nan"), None, None),
        ("loss", float("inf"), None, None),
        ("", 1.0, None, None),
        (" loss", 1.0, None, None),
        ("k" * 251, 1.0, None, None),
        ("loss", 1.0, 2**63, None),
        ("loss", 1.0, None, 1e15),
    ],
)
def test_a_point_the_tracker_would_refuse_is_refused_at_the_call(
    tracker: FakeTracker, make_run: Any, key: str, value: float, step: Any, timestamp: Any
) -> None:
    # One bad point would make the tracker refuse its whole batch of 1000.
    run = make_run()
    with pytest.raises(NeuralError):
        run.log_metric(key, value, step=step, timestamp=timestamp)
    run.log_metric("ok", 1.0)
    run.flush()
    assert [k for k, *_ in tracker.points()] == ["ok"]


def test_a_full_buffer_blocks_the_logger_until_there_is_room(
    tracker: FakeTracker, make_run: Any
) -> None:
    tracker.gate.clear()  # the tracker does not answer
    run = make_run(max_buffer=10, block_timeout=None)
    for i in range(10):
        run.log_metric("loss", 0.5, step=i)
    blocked = threading.Thread(target=run.log_metric, args=("loss", 0.5, 10))
    blocked.start()
    until(lambda: len(run._progress._waiters) == 1, 10, "the 11th point waiting for room")
    assert blocked.is_alive() and not tracker.batches
    tracker.gate.set()
    blocked.join(10)
    assert not blocked.is_alive()
    run.flush()
    assert [s for _, _, s, _ in tracker.points()] == list(range(11))
    assert run.dropped == 0


def test_a_buffer_full_for_block_timeout_raises_and_counts_the_point(
    tracker: FakeTracker, make_run: Any
) -> None:
    tracker.gate.clear()
    run = make_run(max_buffer=10, block_timeout=0.05)
    for i in range(10):
        run.log_metric("loss", 0.5, step=i)
    with pytest.raises(NeuralError, match="max_buffer 10"):
        run.log_metric("loss", 0.5, step=10)
    with pytest.raises(NeuralError, match="max_buffer 10"):
        run.log_metrics({"a": 1.0, "b": 2.0})
    assert run.dropped == 3
    tracker.gate.set()
    run.log_metric("loss", 0.5)  # its step follows the last point logged, not the dropped
    run.flush()
    assert [s for _, _, s, _ in tracker.points()] == list(range(11))


def test_a_failed_batch_is_raised_by_the_next_call_and_counted(
    tracker: FakeTracker, make_run: Any
) -> None:
    tracker.failures.append(Refused(grpc.StatusCode.PERMISSION_DENIED, "not your run"))
    run = make_run(flush_interval=0.01)
    for i in range(3):
        run.log_metric("loss", 0.5, step=i)
    until(lambda: run.errors == 1, 10, "the batch refused")
    with pytest.raises(NeuralError, match="3 metric point") as raised:
        run.log_metric("loss", 0.5, step=3)
    assert raised.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert "not your run" in str(raised.value)
    run.log_metric("loss", 0.5, step=3)  # raised once: logging goes on
    run.flush()
    assert (run.lost, run.sent, run.errors) == (3, 1, 1)
    assert [s for _, _, s, _ in tracker.points()] == [3]


def test_flush_and_close_raise_what_failed_meanwhile(tracker: FakeTracker, make_run: Any) -> None:
    tracker.failures.append(Refused(grpc.StatusCode.UNAVAILABLE, "no route"))
    run = make_run()
    run.log_metric("loss", 0.5)
    with pytest.raises(NeuralError, match="1 metric point") as raised:
        run.flush()
    assert raised.value.unreachable
    tracker.failures.append(ValueError("Cannot invoke RPC on closed channel!"))
    run.log_metric("loss", 0.5)
    with pytest.raises(NeuralError, match="closed channel"):
        run.close()
    assert run.lost == 2
    with pytest.raises(NeuralError, match="is closed"):
        run.log_metric("loss", 0.5)
    assert not run._thread.is_alive()


def test_flush_with_a_timeout_says_how_many_points_are_unsent(
    tracker: FakeTracker, make_run: Any
) -> None:
    tracker.gate.clear()
    run = make_run()
    run.log_metric("loss", 0.5)
    with pytest.raises(NeuralError, match="1 metric point") as raised:
        run.flush(timeout=0.05)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    tracker.gate.set()
    run.flush()
    assert run.sent == 1


def test_as_a_context_manager_the_run_ends_finished_or_failed(
    tracker: FakeTracker, make_run: Any
) -> None:
    with make_run() as run:
        run.log_metric("loss", 0.5)
        run.log_params({"lr": 0.1, "optimizer": "adam"})
    assert [u.run.status for u in tracker.updates] == [tracker_pb2.RUN_STATUS_FINISHED]
    assert list(tracker.updates[0].update_mask.paths) == ["status"]
    assert tracker.points() and tracker.params == [{"lr": "0.1", "optimizer": "adam"}]
    with pytest.raises(RuntimeError, match="diverged"), make_run() as run:
        run.log_metric("loss", 0.5)
        raise RuntimeError("diverged")
    assert tracker.updates[-1].run.status == tracker_pb2.RUN_STATUS_FAILED
    assert len(tracker.points()) == 2


def test_a_run_is_ended_even_when_its_points_were_lost(tracker: FakeTracker, make_run: Any) -> None:
    tracker.failures.append(Refused(grpc.StatusCode.INTERNAL, "disk full"))
    run = make_run()
    run.log_metric("loss", 0.5)
    with pytest.raises(NeuralError, match="disk full"):
        run.end("KILLED")
    assert tracker.updates[-1].run.status == tracker_pb2.RUN_STATUS_KILLED
    with pytest.raises(NeuralError, match="unknown status"):
        run.end("DONE")


def test_threads_logging_at_once_keep_each_keys_order(tracker: FakeTracker, make_run: Any) -> None:
    run = make_run(max_buffer=500)
    workers = [
        threading.Thread(target=lambda k=k: [run.log_metric(k, 0.5) for _ in range(5000)])
        for k in ("a", "b", "c", "d")
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    run.close()
    for key in "abcd":
        assert [s for _, _, s, _ in tracker.points(key)] == list(range(5000))
    assert all(len(b.metrics) <= 1000 for b in tracker.batches)


EXIT_SCRIPT = """
import sys
from neural.v1 import tracker_pb2
from neural_client import Run

class Tracker:
    def StreamMetrics(self, requests, metadata, timeout):
        stored = 0
        for request in requests:
            with open(sys.argv[1], "a") as f:
                f.writelines(f"{m.key} {m.step}\\n" for m in request.metrics)
            stored += len(request.metrics)
        return tracker_pb2.StreamMetricsResponse(metrics_logged=stored)

    def UpdateRun(self, request, metadata, timeout):
        with open(sys.argv[1], "a") as f:
            f.write(f"status {tracker_pb2.RunStatus.Name(request.run.status)}\\n")
        return request.run

owned = sys.argv[2] != "attached"
run = Run(Tracker(), (), tracker_pb2.Run(id="r"), owned=owned, flush_interval=3600)
for i in range(2500):
    run.log_metric("loss", 0.5)
if sys.argv[2] == "crash":
    raise RuntimeError("the loop crashed")
"""


@pytest.mark.parametrize(
    ("how", "status"),
    [("ok", ["status RUN_STATUS_FINISHED"]), ("crash", ["status RUN_STATUS_FAILED"]),
     ("attached", [])],
)  # fmt: skip
def test_at_exit_open_runs_are_flushed_and_the_runs_started_here_ended(
    tmp_path: Any, how: str, status: list[str]
) -> None:
    out = tmp_path / "sent.txt"
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(out), how],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == (1 if how == "crash" else 0), done.stderr
    lines = out.read_text().splitlines()
    assert lines == [f"loss {i}" for i in range(2500)] + status


def test_start_run_creates_the_missing_experiment_and_close_flushes_its_runs() -> None:
    client = Client("127.0.0.1:1", api_key="nk_test")
    calls: list[str] = []

    class Tracker(FakeTracker):
        def ListExperiments(self, request: Any, **kw: Any) -> Any:
            calls.append("list")
            found = [tracker_pb2.Experiment(id="e1", name="mnist")] if "create" in calls else []
            return tracker_pb2.ListExperimentsResponse(experiments=found)

        def CreateExperiment(self, request: Any, **kw: Any) -> Any:
            calls.append("create")
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, "created meanwhile")

        def CreateRun(self, request: Any, **kw: Any) -> Any:
            calls.append(f"run in {request.experiment_id}")
            return tracker_pb2.Run(id="run-9", experiment_id=request.experiment_id, name="a")

    client.tracker = fake = Tracker()
    run = client.start_run("mnist", name="a")
    assert calls == ["list", "create", "list", "run in e1"]
    assert run.id == "run-9"
    run.log_metric("loss", 0.5)
    client.close()
    assert [k for k, *_ in fake.points()] == ["loss"]
    with pytest.raises(NeuralError, match="is closed"):
        run.log_metric("loss", 0.5)
