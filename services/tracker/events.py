"""Run events for WatchRun over Redis pub/sub, sent off the callers' path and coalesced.

A publish through redis-py costs about as much CPU as the rest of a one-point LogMetrics
call, so events wait a few milliseconds and go out together: one pipeline per flush, and the
metrics of one run that arrived since the last flush merged into one message (its newest
100 points). Order per run is kept (a status after metrics is sent after them), and one flush
runs at a time. WatchRun also polls the run, so an event lost to a Redis outage only delays
the end of a watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import redis.asyncio as aioredis

WINDOW_S = 0.01
MAX_RUNS = 1000  # runs with unsent events: a stalled Redis cannot pile up memory
NEWEST = 100  # metric points per message


def channel(run_id: str) -> str:
    return f"neural:tracker:run:{run_id}"


class RunEvents:
    def __init__(self, redis: aioredis.Redis, window_s: float = WINDOW_S) -> None:
        self.redis = redis
        self.window_s = window_s
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def metrics(self, run_id: str, points: list[Any]) -> None:
        """New points, each [key, value, step, timestamp ms]."""
        queue = self._queue(run_id)
        if queue is None:
            return
        if queue and queue[-1]["type"] == "metrics":
            queue[-1]["metrics"] = (queue[-1]["metrics"] + points)[-NEWEST:]
        else:
            queue.append({"type": "metrics", "metrics": points[-NEWEST:]})

    def status(self, run_id: str, status: str) -> None:
        queue = self._queue(run_id)
        if queue is not None:
            queue.append({"type": "status", "status": status})

    def _queue(self, run_id: str) -> list[dict[str, Any]] | None:
        queue = self._pending.get(run_id)
        if queue is None:
            if len(self._pending) >= MAX_RUNS:
                return None
            queue = self._pending[run_id] = []
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return queue

    async def _flush(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self.window_s)
                batch, self._pending = self._pending, {}
                with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for run_id, messages in batch.items():
                            for message in messages:
                                pipe.publish(channel(run_id), json.dumps(message))
                        await pipe.execute()
        finally:
            self._flusher = None
