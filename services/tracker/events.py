"""Run events for WatchRun over Redis pub/sub, sent off the callers' path and coalesced.

A publish through redis-py costs about as much CPU as the rest of a one-point LogMetrics
call, so events wait a few milliseconds and go out together: one pipeline per flush, and the
metrics of one run that arrived since the last flush merged into one message (its newest
100 points). Order per run is kept (a status after metrics is sent after them), and one flush
runs at a time.

Most runs have no watcher, so a flush first asks Redis which of its channels have a
subscriber (one PUBSUB NUMSUB, which counts every tracker process's watchers) and encodes and
publishes only those. A watch subscribes before it sends its first response, and an event is
queued before its RPC answers, so an event logged after that response is queued after the
subscription, and the NUMSUB of its flush sees the watcher.

A flush that fails is never silent: it is counted, logged (at most every WARN_EVERY_S), and
its messages stay pending ahead of newer ones, for the next flush after a back-off. Memory
stays bounded while Redis is away: at most MAX_RUNS runs, MAX_MESSAGES messages per run and
NEWEST points per message; what goes over is counted as dropped. When Redis answers again the
watchers' subscriptions may not be back yet (see fanout.py): for HOLD_S, events of runs
without a subscriber are kept and checked again rather than dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter

log = logging.getLogger(__name__)

WINDOW_S = 0.01
MAX_RUNS = 1000  # runs with unsent events: a stalled Redis cannot pile up memory
MAX_MESSAGES = 16  # unsent messages of one run (statuses and metrics alternating)
NEWEST = 100  # metric points per message
RETRY_S = 0.2  # the first back-off after a failed flush, doubled up to MAX_RETRY_S
MAX_RETRY_S = 2.0
WARN_EVERY_S = 30.0
# After Redis was away, watchers' subscriptions come back within their Fanout's retry_s (1 s):
# until then an event of a run nobody seems to watch is kept, checked again every HELD_POLL_S
HOLD_S = 3.0
HELD_POLL_S = 0.05

PUBLISHED = Counter("tracker_events_published_total", "Run events published to watchers")
UNWATCHED = Counter(
    "tracker_events_unwatched_total", "Run events not encoded nor sent: nobody watched the run"
)
DROPPED = Counter(
    "tracker_events_dropped_total",
    "Run events dropped unsent: MAX_RUNS runs were pending (runs), a run had MAX_MESSAGES "
    "(messages), or a flush failed other than for Redis (error)",
    ["reason"],
)
POINTS_MERGED_AWAY = Counter(
    "tracker_event_points_dropped_total",
    "Metric points left out of run events: a run's newest NEWEST points since the last flush go",
)
PUBLISH_FAILURES = Counter(
    "tracker_event_publish_failures_total",
    "Flushes of run events that failed (their events are retried), by error",
    ["error"],
)

Message = dict[str, Any]


def channel(run_id: str) -> str:
    return f"neural:tracker:run:{run_id}"


def _append(queue: list[Message], message: Message) -> None:
    """`message` after the others of its run: metrics merged into metrics before them, a
    status replacing the status before it (a watcher reads the run on any status)."""
    last = queue[-1] if queue else None
    if last is not None and last["type"] == message["type"] == "metrics":
        merged = last["metrics"] + message["metrics"]
        if len(merged) > NEWEST:
            POINTS_MERGED_AWAY.inc(len(merged) - NEWEST)
        last["metrics"] = merged[-NEWEST:]
    elif last is not None and last["type"] == message["type"] == "status":
        queue[-1] = message
    else:
        queue.append(message)
        if len(queue) > MAX_MESSAGES:
            del queue[0]
            DROPPED.labels("messages").inc()


class RunEvents:
    def __init__(
        self,
        redis: aioredis.Redis,
        window_s: float = WINDOW_S,
        retry_s: float = RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        # Its own client: a flush uses one connection at a time, which nothing else (the
        # watchers' subscription, other commands) can hold.
        self.redis = redis
        self.window_s = window_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self._pending: dict[str, list[Message]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._backoff = 0.0  # the pause before the next flush after failures; 0: none failed
        self._failures = 0  # failed flushes since the last one that went out
        self._warned_at = -WARN_EVERY_S
        self._recovered_at = -math.inf  # when Redis answered again after failures
        self._pause = window_s

    @property
    def pending(self) -> int:
        """Runs with unsent events."""
        return len(self._pending)

    def metrics(self, run_id: str, points: list[Any]) -> None:
        """New points, each [key, value, step, timestamp ms]."""
        queue = self._queue(run_id)
        if queue is not None:
            if len(points) > NEWEST:
                POINTS_MERGED_AWAY.inc(len(points) - NEWEST)
            _append(queue, {"type": "metrics", "metrics": points[-NEWEST:]})

    def status(self, run_id: str, status: str) -> None:
        queue = self._queue(run_id)
        if queue is not None:
            _append(queue, {"type": "status", "status": status})

    def _queue(self, run_id: str) -> list[Message] | None:
        queue = self._pending.get(run_id)
        if queue is None:
            if len(self._pending) >= MAX_RUNS:
                DROPPED.labels("runs").inc()
                return None
            queue = self._pending[run_id] = []
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return queue

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self._backoff or self._pause)
                batch, self._pending = self._pending, {}
                try:
                    held = await self._send(batch)
                except (aioredis.RedisError, OSError) as exc:
                    self._failed(exc, batch)
                except Exception:
                    # a bug, not Redis: retrying would fail again and again
                    log.exception("run events dropped: %d runs' unsent events", len(batch))
                    DROPPED.labels("error").inc(sum(len(q) for q in batch.values()))
                else:
                    self._requeue(held)
                    self._pause = HELD_POLL_S if held else self.window_s
        finally:
            self._flusher = None

    async def _send(self, batch: dict[str, list[Message]]) -> dict[str, list[Message]]:
        """Publishes the messages of `batch`'s watched runs; returns the unwatched ones kept
        for later (see HOLD_S). Leaves in `batch` only what is still to send if it raises."""
        runs = list(batch)
        counts = await self.redis.pubsub_numsub(*(channel(r) for r in runs))
        now = time.monotonic()
        if self._failures:
            log.warning("run events: Redis answers again after %d failed flushes", self._failures)
            self._backoff, self._failures, self._recovered_at = 0.0, 0, now
        holding = now < self._recovered_at + HOLD_S
        held: dict[str, list[Message]] = {}
        unwatched = 0
        for run, (_, subscribers) in zip(runs, counts, strict=True):
            if subscribers:
                continue
            if holding:
                held[run] = batch.pop(run)
            else:
                # nobody listens now: a later watcher starts after these events
                unwatched += len(batch.pop(run))
        if unwatched:
            UNWATCHED.inc(unwatched)
        if batch:
            async with self.redis.pipeline(transaction=False) as pipe:
                for run, messages in batch.items():
                    name = channel(run)
                    for message in messages:
                        pipe.publish(name, json.dumps(message))
                await pipe.execute()
            PUBLISHED.inc(sum(len(messages) for messages in batch.values()))
        return held

    def _failed(self, exc: BaseException, batch: dict[str, list[Message]]) -> None:
        """Keeps `batch` pending ahead of the events queued since, and backs off."""
        PUBLISH_FAILURES.labels(type(exc).__name__).inc()
        self._failures += 1
        self._backoff = min(max(self.retry_s, 2 * self._backoff), self.max_retry_s)
        self._requeue(batch)
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "run events not published (%s: %s): %d failed flushes in a row, %d runs' "
                "events kept, retried in %.1f s",
                type(exc).__name__,
                exc,
                self._failures,
                len(self._pending),
                self._backoff,
            )

    def _requeue(self, older: dict[str, list[Message]]) -> None:
        """`older`'s messages pending again, each run's ahead of those queued since."""
        if not older:
            return
        newer, self._pending = self._pending, {}
        for run, queue in older.items():
            for message in newer.pop(run, ()):
                _append(queue, message)
            self._keep(run, queue)
        for run, queue in newer.items():
            self._keep(run, queue)

    def _keep(self, run: str, queue: list[Message]) -> None:
        if len(self._pending) >= MAX_RUNS:
            DROPPED.labels("runs").inc(len(queue))
        else:
            self._pending[run] = queue
