"""`Run`: one tracker run, logged to from a training loop without waiting for the network.

`log_metric` checks the point and appends it to an in-memory buffer under a lock (about a
microsecond); a background thread sends the buffer as messages of up to 1000 points (the
tracker's limit per batch) over a `StreamMetrics` call, in the order they were logged.
A stream rather than a `LogMetrics` call per batch: batches go without waiting for a round
trip each (about 3x the points per second here), and the whole stream is one call to the
gateway's rate limit (a user's 600 calls a minute would otherwise cap a run at 10,000 points
a second, and a slow loop's calls would eat into it). A stream lives at most STREAM_SECONDS;
its answer confirms what was stored, and `flush` ends it to get that answer.

The buffer is bounded (`max_buffer` points logged and not yet handed to gRPC): when it is
full, `log_metric` blocks until the sender makes room, at most `block_timeout` seconds, then
raises `NeuralError` and counts the point in `dropped`. Blocking, not dropping, because a
training loop that outruns the tracker should slow down rather than lose its history.

A stream that fails is not retried (its batches before the failure were stored: sending them
again would store them twice); its points are counted in `lost` (an upper bound: the tracker
stores a stream's batches in order, but does not say how far it got), and the error is
raised by the next `log_metric`, `log_metrics`, `flush`, `close` or `end`. At exit
each open run is flushed, and a run this process started and did not end is ended: FAILED
when the interpreter is exiting on an uncaught exception, FINISHED otherwise (as MLflow
does); what could not be sent then is reported on stderr."""

from __future__ import annotations

import atexit
import math
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from neural.v1 import tracker_pb2

from .errors import NeuralError

BATCH = 1000  # points per LogMetrics: the tracker's limit
MAX_KEY = 250  # the tracker's longest metric key
MIN_MS, MAX_MS = -62_135_596_800_000, 253_402_300_799_999  # years 1 to 9999, as the tracker
MIN_STEP, MAX_STEP = -(2**63), 2**63 - 1
STATUSES = {
    "FINISHED": tracker_pb2.RUN_STATUS_FINISHED,
    "FAILED": tracker_pb2.RUN_STATUS_FAILED,
    "KILLED": tracker_pb2.RUN_STATUS_KILLED,
}
STREAM_SECONDS = 10.0  # a stream's longest life: see Run._batches
EXIT_TIMEOUT_S = 30.0  # how long the exit hook waits for each run's points
ENDED = field_mask_pb2.FieldMask(paths=["status"])

_time_ns = time.time_ns  # one global lookup on the fast path, not two

_OPEN: set[Run] = set()  # runs not yet closed, flushed by the exit hook
_OPEN_LOCK = threading.Lock()


def _stamp_ms(timestamp: float | datetime) -> int:
    """Milliseconds since the epoch from seconds since the epoch or a datetime."""
    seconds = timestamp.timestamp() if isinstance(timestamp, datetime) else float(timestamp)
    if not math.isfinite(seconds) or not MIN_MS <= seconds * 1000 <= MAX_MS:
        raise NeuralError(f"timestamp {timestamp!r} is outside years 1 to 9999")
    return round(seconds * 1000)


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY or key != key.strip():
        raise NeuralError(
            f"metric key {key!r} must be 1-{MAX_KEY} characters without surrounding spaces"
        )


class _Stream:
    """One StreamMetrics call: the points its messages took, and whether it has ended."""

    def __init__(self) -> None:
        self.points = 0
        self.done = False


def _request(run_id: str, points: list[tuple[str, float, int, int]]) -> Any:
    """The batch as a message: the sender's main cost, so the timestamp of a run of points
    logged in the same millisecond is built once and copied."""
    request = tracker_pb2.LogMetricsRequest(run_id=run_id)
    add = request.metrics.add
    last, moment = None, timestamp_pb2.Timestamp()
    for key, value, step, stamp in points:
        if stamp != last:
            seconds, ms = divmod(stamp, 1000)
            moment = timestamp_pb2.Timestamp(seconds=seconds, nanos=ms * 1_000_000)
            last = stamp
        add(key=key, value=value, step=step).timestamp.CopyFrom(moment)
    return request


class Run:
    """A run's handle: `Client.start_run` creates the run, `Client.run` attaches to one.

    As a context manager it ends the run FINISHED, or FAILED when the block raises. Safe to
    use from several threads. `sent` (stored), `lost` (in a failed stream), `dropped` (not
    logged: the buffer stayed full) count points, `errors` failed streams."""

    def __init__(
        self,
        tracker: Any,
        metadata: Any,
        run: tracker_pb2.Run,
        *,
        owned: bool = False,
        max_buffer: int = 100_000,
        flush_interval: float = 0.5,
        block_timeout: float | None = 60.0,
        rpc_timeout: float = 30.0,
    ) -> None:
        if max_buffer < 1:
            raise NeuralError("max_buffer must be at least 1")
        self.info = run
        self.id = run.id
        self._tracker = tracker
        self._metadata = metadata
        self._owned = owned  # started by this process: the exit hook ends it
        self._max_buffer = max_buffer
        self._full = min(BATCH, max_buffer)  # this many points waiting are sent at once
        self._flush_interval = flush_interval
        self._block_timeout = block_timeout
        self._rpc_timeout = rpc_timeout
        lock = threading.Lock()
        self._lock = lock
        self._wake = threading.Condition(lock)  # the sender waits here
        self._progress = threading.Condition(lock)  # blocked loggers and flushes wait here
        self._pending: list[tuple[str, float, int, int]] = []
        self._steps: dict[str, int] = {}  # each key's last step, for step=None
        self._taken = 0  # points the sender took from the buffer so far
        self._settled = 0  # of those, answered (stored or lost)
        self._flush_upto = 0  # a flush wants every point up to this one sent now
        self._error: NeuralError | None = None  # the first failure not yet raised
        self._halted = False  # an error to raise, or closed: the one test on the fast path
        self._unreported = 0  # points lost since the last raise
        self._closing = False
        self._closed = False
        self._ended = False
        self.sent = self.lost = self.dropped = self.errors = 0
        self._thread = threading.Thread(
            target=self._sender, name=f"neural-run-{run.id[:8]}", daemon=True
        )
        self._thread.start()
        with _OPEN_LOCK:
            _OPEN.add(self)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, name={self.info.name!r})"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.end("FINISHED")
            return
        try:
            self.end("FAILED")
        except NeuralError as err:  # the block's own exception is the one to see
            exc.add_note(f"and ending run {self.id} failed: {err}")

    # ---- metrics: the fast path --------------------------------------------------------------

    def log_metric(
        self,
        key: str,
        value: float,
        step: int | None = None,
        timestamp: float | datetime | None = None,
    ) -> None:
        """Queue one point. `step` defaults to the key's last step + 1 (0 first);
        `timestamp` (seconds since the epoch, or a datetime) to now."""
        if self._halted:
            self._raise_failure()
        value = float(value)
        if not math.isfinite(value):
            raise NeuralError(f"metric {key!r} is {value}: only finite values are stored")
        stamp = _time_ns() // 1_000_000 if timestamp is None else _stamp_ms(timestamp)
        with self._lock:
            last = self._steps.get(key)
            if last is None:
                _check_key(key)
                last = -1
            if step is None:
                step = last + 1
            elif not MIN_STEP <= step <= MAX_STEP:
                raise NeuralError(f"metric {key!r}: step {step} is outside int64")
            else:
                step = int(step)
            if len(self._pending) >= self._max_buffer:
                self._wait_for_room(1)
            self._steps[key] = step
            pending = self._pending
            pending.append((key, value, step, stamp))
            # The first point starts the sender's interval; a full batch goes at once.
            n = len(pending)
            if n == 1 or n == self._full:
                self._wake.notify_all()

    def log_metrics(
        self,
        metrics: Mapping[str, float],
        step: int | None = None,
        timestamp: float | datetime | None = None,
    ) -> None:
        """Queue one point per key, with one timestamp (and `step`, when given)."""
        if self._halted:
            self._raise_failure()
        stamp = _time_ns() // 1_000_000 if timestamp is None else _stamp_ms(timestamp)
        if step is not None and not MIN_STEP <= step <= MAX_STEP:
            raise NeuralError(f"step {step} is outside int64")
        points = []
        for key, value in metrics.items():
            value = float(value)
            if not math.isfinite(value):
                raise NeuralError(f"metric {key!r} is {value}: only finite values are stored")
            points.append((key, value))
        with self._lock:
            for key in metrics:
                if key not in self._steps:
                    _check_key(key)
            if len(self._pending) + len(points) > self._max_buffer:
                self._wait_for_room(len(points))
            steps, pending = self._steps, self._pending
            idle = not pending
            for key, value in points:
                at = steps.get(key, -1) + 1 if step is None else int(step)
                steps[key] = at
                pending.append((key, value, at, stamp))
            if idle or len(pending) >= self._full:
                self._wake.notify_all()

    def _wait_for_room(self, count: int) -> None:
        """Called with the lock held: backpressure while the buffer is full."""
        room = max(self._max_buffer - count, 0)
        timeout = self._block_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._pending) > room and not self._closing:
            self._wake.notify_all()  # a full buffer is sent at once (see _batches)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.dropped += count
                raise NeuralError(
                    f"run {self.id}: {len(self._pending)} points are waiting for the "
                    f"tracker (max_buffer {self._max_buffer}) and there was no room for "
                    f"{timeout:g} s; {count} point(s) not logged"
                )
            self._progress.wait(left)
        if self._closing:
            raise NeuralError(f"run {self.id} is closed")

    # ---- the sender --------------------------------------------------------------------------

    def _sender(self) -> None:
        """Opens a stream when there are points, and waits for its answer."""
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._wake.wait()
                if not self._pending:
                    return
            stream = _Stream()
            answer, error = None, None
            try:
                answer = self._tracker.StreamMetrics(
                    self._batches(stream),
                    metadata=self._metadata,
                    timeout=STREAM_SECONDS + self._rpc_timeout,
                )
            except grpc.RpcError as exc:
                error = NeuralError.from_rpc(exc)
            except Exception as exc:  # a closed channel, a bug: surfaced all the same
                error = NeuralError(f"{type(exc).__name__}: {exc}")
            with self._lock:
                stream.done = True  # a generator grpc stopped pulling from takes no more
                self._wake.notify_all()
                count = stream.points
                stored = count if error is None else 0
                if answer is not None and answer.metrics_logged != count:
                    stored = min(answer.metrics_logged, count)
                    error = NeuralError(f"the tracker stored {stored} of {count} points")
                self._settle(count, stored, error)

    def _batches(self, stream: _Stream) -> Iterator[Any]:
        """The stream's messages: a batch when 1000 points are waiting, when the oldest has
        waited `flush_interval` or when a flush asks; the stream ends when a flush has
        nothing left to wait for, on close, or after STREAM_SECONDS (so that its answer
        confirms what was stored, and a failure leaves at most that much in doubt)."""
        ends = time.monotonic() + STREAM_SECONDS
        while True:
            with self._lock:
                deadline = None
                while True:
                    if stream.done:
                        return
                    pending = self._pending
                    now = time.monotonic()
                    if not pending:
                        if self._closing or self._flush_upto > self._settled or now >= ends:
                            return
                        deadline = None
                        self._wake.wait(ends - now)
                        continue
                    if now >= ends:
                        return  # the next stream takes them
                    if (
                        len(pending) >= self._full
                        or self._closing
                        or self._flush_upto > self._taken
                    ):
                        break
                    if deadline is None:
                        deadline = now + self._flush_interval
                    elif now >= deadline:
                        break
                    self._wake.wait(min(deadline, ends) - now)
                chunk = pending[:BATCH]
                del pending[:BATCH]
                self._taken += len(chunk)
                stream.points += len(chunk)
                self._progress.notify_all()  # room for loggers waiting on a full buffer
            yield _request(self.id, chunk)

    def _settle(self, count: int, stored: int, error: NeuralError | None) -> None:
        """With the lock held: `count` points answered, `stored` of them stored."""
        self._settled += count
        self.sent += stored
        if stored < count:
            self.lost += count - stored
            self.errors += 1
            self._unreported += count - stored
            if self._error is None:
                self._error = error
                self._halted = True
        self._progress.notify_all()

    def _raise_failure(self) -> None:
        with self._lock:
            error, lost = self._error, self._unreported
            self._error, self._unreported = None, 0
            self._halted = self._closed
        if error is not None:
            raise NeuralError(
                f"run {self.id}: {lost} metric point(s) may not have been logged: {error.message}",
                error.code,
            )
        if self._closed:
            raise NeuralError(f"run {self.id} is closed")

    # ---- flushing and ending -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Points logged and not yet confirmed stored by the tracker."""
        with self._lock:
            return self._taken + len(self._pending) - self._settled

    def flush(self, timeout: float | None = None) -> None:
        """Send what was logged so far and wait until the tracker confirms it stored it (at
        most `timeout` seconds, else NeuralError); raises any failure not yet raised."""
        with self._lock:
            target = self._taken + len(self._pending)
            self._flush_upto = max(self._flush_upto, target)
            self._wake.notify_all()
            done = self._progress.wait_for(lambda: self._settled >= target, timeout)
            waiting = target - self._settled
        self._raise_failure_if_any()
        if not done:
            raise NeuralError(
                f"run {self.id}: {waiting} metric point(s) not confirmed after {timeout:g} s",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    def _raise_failure_if_any(self) -> None:
        if self._error is not None:
            self._raise_failure()

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the sender; the run's status is left as it is. Idempotent."""
        if self._closed:
            self._raise_failure_if_any()
            return
        try:
            self.flush(timeout)
        finally:
            with self._lock:
                self._closing = True
                self._wake.notify_all()
                self._progress.notify_all()
            self._thread.join(timeout)
            self._closed = self._halted = True
            with _OPEN_LOCK:
                _OPEN.discard(self)

    def end(self, status: str = "FINISHED", timeout: float | None = None) -> tracker_pb2.Run:
        """Flush, stop the sender and set the run's status (FINISHED, FAILED or KILLED); the
        run is ended even when points were lost, and then the loss is raised."""
        if status not in STATUSES:
            raise NeuralError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
        try:
            self.close(timeout)
        finally:
            request = tracker_pb2.UpdateRunRequest(
                run=tracker_pb2.Run(id=self.id, status=STATUSES[status]), update_mask=ENDED
            )
            try:
                self.info = self._tracker.UpdateRun(
                    request, metadata=self._metadata, timeout=self._rpc_timeout
                )
            except grpc.RpcError as exc:
                raise NeuralError.from_rpc(exc) from None
            self._ended = True
        return self.info

    def _at_exit(self) -> None:
        failed = getattr(sys, "last_type", None) not in (None, SystemExit, KeyboardInterrupt)
        try:
            if self._owned and not self._ended:
                self.end("FAILED" if failed else "FINISHED", EXIT_TIMEOUT_S)
            else:
                self.close(EXIT_TIMEOUT_S)
        except NeuralError as err:
            print(f"neural: at exit, {err}", file=sys.stderr)

    # ---- params and tags: rare, so sent at once -------------------------------------------

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params are write-once: a key logged again with another value is INVALID_ARGUMENT."""
        request = tracker_pb2.LogParamsRequest(
            run_id=self.id, params={k: str(v) for k, v in params.items()}
        )
        self._unary(self._tracker.LogParams, request)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        request = tracker_pb2.SetTagsRequest(
            run_id=self.id, tags={k: str(v) for k, v in tags.items()}
        )
        self._unary(self._tracker.SetTags, request)

    def _unary(self, fn: Any, request: Any) -> Any:
        try:
            return fn(request, metadata=self._metadata, timeout=self._rpc_timeout)
        except grpc.RpcError as exc:
            raise NeuralError.from_rpc(exc) from None


@atexit.register
def _flush_open_runs() -> None:
    # Exit hooks run after non-daemon threads are joined but before daemon threads stop, so
    # each run's sender still ships while its flush waits.
    with _OPEN_LOCK:
        runs = list(_OPEN)
    for run in runs:
        run._at_exit()
