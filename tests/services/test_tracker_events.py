"""Run events go out together after a short wait: a run's metrics merged into one message
(its newest points), in order with its status changes, one pipeline per flush."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from services.tracker import events as events_module
from services.tracker.events import MAX_MESSAGES, NEWEST, RunEvents, channel
from tests.waiting import until_async


class FakePipeline:
    def __init__(self, sent: list[list[tuple[str, Any]]]) -> None:
        self.sent = sent
        self.queued: list[tuple[str, Any]] = []

    async def __aenter__(self) -> FakePipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def publish(self, name: str, data: str) -> None:
        self.queued.append((name, json.loads(data)))

    async def execute(self) -> None:
        self.sent.append(self.queued)


class FakeRedis:
    """Publishes into `sent`; `watched`: the channels with a subscriber (None: all); `down`:
    every command fails as with Redis away."""

    def __init__(self, watched: set[str] | None = None) -> None:
        self.sent: list[list[tuple[str, Any]]] = []
        self.watched = watched
        self.down = False
        self.failures = 0

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise redis.ConnectionError("Connection refused")

    async def pubsub_numsub(self, *names: str) -> list[tuple[bytes, int]]:
        self._check()
        return [(n.encode(), int(self.watched is None or n in self.watched)) for n in names]

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        self._check()
        return FakePipeline(self.sent)


async def test_events_of_a_window_go_in_one_pipeline_merged_and_in_order() -> None:
    redis = FakeRedis()
    events = RunEvents(redis, window_s=0.01)  # type: ignore[arg-type]
    events.metrics("a", [["loss", 0.5, i, 1] for i in range(80)])
    events.metrics("a", [["loss", 0.4, i, 1] for i in range(80, 160)])
    events.metrics("b", [["acc", 0.9, 1, 1]])
    events.status("a", "FINISHED")
    events.metrics("a", [["loss", 0.3, 160, 1]])
    # the flusher ends once nothing is pending: everything it was going to send is sent
    await until_async(lambda: redis.sent and events._flusher is None, 5, "the flush to end")
    assert len(redis.sent) == 1
    (flush,) = redis.sent
    assert [(name, m["type"]) for name, m in flush] == [
        (channel("a"), "metrics"),
        (channel("a"), "status"),
        (channel("a"), "metrics"),
        (channel("b"), "metrics"),
    ]
    merged = flush[0][1]["metrics"]
    assert len(merged) == NEWEST and merged[-1][2] == 159 and merged[0][2] == 60
    events.status("b", "KILLED")  # a later event starts a new flush
    await until_async(lambda: events._flusher is None, 5, "the second flush to end")
    assert redis.sent[1] == [(channel("b"), {"type": "status", "status": "KILLED"})]


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_only_watched_runs_events_are_encoded_and_sent() -> None:
    redis = FakeRedis(watched={channel("w")})
    events = RunEvents(redis, window_s=0.01)  # type: ignore[arg-type]
    unwatched = _sample("tracker_events_unwatched_total")
    encoded: list[Any] = []
    real_dumps = events_module.json.dumps
    events_module.json = SimpleNamespace(dumps=lambda m: encoded.append(m) or real_dumps(m))  # type: ignore[assignment]
    try:
        for n in range(3):
            events.metrics("w", [["loss", 0.5, n, 1]])
            events.metrics(f"nobody-{n}", [["loss", 0.5, n, 1]])
        events.status("nobody-0", "FINISHED")
        await until_async(lambda: events._flusher is None, 5, "the flush to end")
    finally:
        events_module.json = json  # type: ignore[attr-defined]
    assert redis.sent == [
        [(channel("w"), {"type": "metrics", "metrics": [["loss", 0.5, n, 1] for n in range(3)]})]
    ]
    assert len(encoded) == 1  # the other runs' events were never encoded
    assert _sample("tracker_events_unwatched_total") - unwatched == 4


async def test_a_failed_flush_is_counted_logged_and_retried_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = FakeRedis()
    redis.down = True
    events = RunEvents(redis, window_s=0.01, retry_s=0.01, max_retry_s=0.05)  # type: ignore[arg-type]
    failures = _sample("tracker_event_publish_failures_total", error="ConnectionError")
    with caplog.at_level(logging.WARNING, logger="services.tracker.events"):
        events.metrics("a", [["loss", 0.5, 1, 1]])
        events.status("a", "RUNNING")
        await until_async(lambda: redis.failures >= 3, 5, "flushes to fail")
        # newer events join the unsent ones, after them
        events.status("a", "FINISHED")  # replaces the RUNNING before it
        events.metrics("a", [["loss", 0.4, 2, 1]])
        events.metrics("b", [["acc", 0.9, 1, 1]])
        assert redis.sent == [] and events.pending == 2
        redis.down = False
        await until_async(lambda: events._flusher is None, 5, "the retried flush to end")
    assert _sample("tracker_event_publish_failures_total", error="ConnectionError") > failures
    warnings = [r.getMessage() for r in caplog.records if "not published" in r.getMessage()]
    assert len(warnings) == 1 and "Connection refused" in warnings[0]  # one per WARN_EVERY_S
    assert any("answers again" in r.getMessage() for r in caplog.records)
    assert redis.sent == [
        [
            (channel("a"), {"type": "metrics", "metrics": [["loss", 0.5, 1, 1]]}),
            (channel("a"), {"type": "status", "status": "FINISHED"}),
            (channel("a"), {"type": "metrics", "metrics": [["loss", 0.4, 2, 1]]}),
            (channel("b"), {"type": "metrics", "metrics": [["acc", 0.9, 1, 1]]}),
        ]
    ]


async def test_unsent_events_stay_bounded_while_redis_is_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_module, "MAX_RUNS", 5)
    redis = FakeRedis()
    redis.down = True
    events = RunEvents(redis, window_s=0.01, retry_s=0.01, max_retry_s=0.01)  # type: ignore[arg-type]
    dropped_runs = _sample("tracker_events_dropped_total", reason="runs")
    dropped_messages = _sample("tracker_events_dropped_total", reason="messages")
    for n in range(8):
        events.metrics(f"r{n}", [["loss", 0.5, n, 1]])
    for n in range(MAX_MESSAGES + 2):  # alternating: nothing merges
        events.status("r0", "RUNNING")
        events.metrics("r0", [["loss", 0.5, n, 1]])
    await until_async(lambda: redis.failures >= 2, 5, "flushes to fail")
    assert events.pending == 5
    assert _sample("tracker_events_dropped_total", reason="runs") - dropped_runs == 3
    assert _sample("tracker_events_dropped_total", reason="messages") - dropped_messages > 0
    redis.down = False
    await until_async(lambda: events._flusher is None, 5, "the flush to end")
    (flush,) = redis.sent
    assert sum(name == channel("r0") for name, _ in flush) == MAX_MESSAGES
    assert flush[MAX_MESSAGES - 1][1]["metrics"][-1][2] == MAX_MESSAGES + 1  # the newest kept


async def test_after_an_outage_events_wait_for_the_watchers_to_subscribe_again() -> None:
    redis = FakeRedis(watched=set())  # the watchers' subscriptions are not back yet
    redis.down = True
    events = RunEvents(redis, window_s=0.01, retry_s=0.01, max_retry_s=0.01)  # type: ignore[arg-type]
    events.metrics("a", [["loss", 0.5, 1, 1]])
    await until_async(lambda: redis.failures >= 2, 5, "flushes to fail")
    redis.down = False
    await until_async(lambda: redis.sent == [] and not events._failures, 5, "Redis to answer")
    assert events.pending == 1  # kept: nobody subscribed yet
    redis.watched = {channel("a")}
    await until_async(lambda: events._flusher is None, 5, "the flush to end")
    assert redis.sent == [[(channel("a"), {"type": "metrics", "metrics": [["loss", 0.5, 1, 1]]})]]
