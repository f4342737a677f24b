"""The job's side: what a JobStore calls on every job event. Each event becomes one Dramatiq
message per subscribed hook, queued off the job's path; progress events are throttled."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..jobs import JobRecord
from ..tasks import Sendable
from .records import Delivery, deliveries, record
from .validation import EVENTS, subscribed

log = logging.getLogger("neural.webhooks")

# How long a job's update may wait for Redis to take its webhook messages.
ENQUEUE_TIMEOUT_S = 3.0


def job_json(rec: JobRecord) -> dict[str, Any]:
    """What a receiver learns of the job: its state and outcome, never its request."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": rec.id,
        "kind": rec.kind,
        "state": rec.state,
        "progress": rec.progress,
        "result": rec.result,
        "error": rec.error,
        "details": rec.details,
        "attempts": rec.attempts,
        "created_at": iso(rec.created_at),
        "started_at": iso(rec.started_at),
        "ended_at": iso(rec.ended_at),
    }


@dataclass(frozen=True)
class Queued:
    """One event for one hook; `error` says why it could not be queued."""

    index: int
    url: str
    delivery_id: str
    error: str = ""


async def enqueue(
    actor: Sendable,
    job_id: str,
    hooks: Sequence[Mapping[str, Any]],
    event: str,
    payload: Mapping[str, Any],
) -> list[Queued]:
    """Queue `event` for every hook subscribed to it. Never raises: a hook whose message
    Redis did not take within ENQUEUE_TIMEOUT_S comes back with its error."""
    targets = [
        Queued(i, str(h.get("url", "")), str(uuid.uuid4()))
        for i, h in enumerate(hooks)
        if subscribed(h, event)
    ]
    if not targets:
        return []
    done: dict[int, Queued] = {}

    def send_all() -> None:
        for q in targets:
            try:
                actor.send(job_id, q.index, event, q.delivery_id, dict(payload))
                done[q.index] = q
            except Exception as exc:  # Redis down or refusing: the job goes on regardless
                log.warning("webhook %s for job %s not queued: %s", event, job_id, exc)
                done[q.index] = Queued(q.index, q.url, q.delivery_id, f"not queued: {exc}")

    try:
        await asyncio.wait_for(asyncio.to_thread(send_all), ENQUEUE_TIMEOUT_S)
    except TimeoutError:
        log.warning("webhook %s for job %s: the queue did not answer", event, job_id)
    return [
        done.get(q.index)
        or Queued(q.index, q.url, q.delivery_id, "not queued: the queue did not answer")
        for q in targets
    ]


class WebhookSender:
    """What a JobStore calls on every job event (its `JobEvents`): queues the event for the
    job's subscribed hooks, through the delivery actor or its `delivery_task`."""

    def __init__(self, actor: Sendable, table: Table, progress_interval: float = 1.0) -> None:
        self.actor = actor
        self.table = table
        self.progress_interval = progress_interval
        self._last_progress: dict[str, float] = {}

    def _throttled(self, job_id: str, event: str) -> bool:
        if event != "progress":
            if event in ("completed", "failed", "cancelled"):
                self._last_progress.pop(job_id, None)
            return False
        now = time.monotonic()
        last = self._last_progress.get(job_id)
        if last is not None and now - last < self.progress_interval:
            return True
        self._last_progress[job_id] = now
        return False

    async def job_event(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rec: JobRecord,
        event: str,
        message: str = "",
    ) -> None:
        hooks = rec.request.get("webhooks") or []
        if not hooks or event not in EVENTS or self._throttled(rec.id, event):
            return
        occurred = dt.datetime.now(dt.UTC)
        payload = {
            "event": event,
            "message": message,
            "occurred_at": occurred.isoformat(),
            "job": job_json(rec),
        }
        for q in await enqueue(self.actor, rec.id, hooks, event, payload):
            if not q.error:
                continue
            try:
                await record(
                    sessions,
                    self.table,
                    Delivery(rec.id, q.delivery_id, q.url, event, 0, 0, False, q.error, occurred),
                )
            except Exception:  # the database is down too: the log is all there is
                log.exception("could not record the unsent webhook of job %s", rec.id)

    async def deliveries(
        self, sessions: async_sessionmaker[AsyncSession], job_ids: Iterable[str], per_job: int = 50
    ) -> dict[str, list[Delivery]]:
        return await deliveries(sessions, self.table, job_ids, per_job)
