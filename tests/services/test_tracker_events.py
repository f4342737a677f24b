"""Run events go out together after a short wait: a run's metrics merged into one message
(its newest points), in order with its status changes, one pipeline per flush."""

from __future__ import annotations

import json
from typing import Any

from services.tracker.events import NEWEST, RunEvents, channel
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
    def __init__(self) -> None:
        self.sent: list[list[tuple[str, Any]]] = []

    def pipeline(self, transaction: bool = True) -> FakePipeline:
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
