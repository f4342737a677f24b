"""The audit log: every authorization decision and key change (who, what, when, allowed or
why not), queryable by admins.

A Check must not wait for a database write, so events go to an in-memory queue that one task
writes in batches, at most every BATCH_SECONDS (one commit per batch, not per decision), or as
soon as BATCH events are waiting; `flush` writes what is queued now (admins' queries, tests,
the server's stop). `record` only queues a tuple: the row (its id, its datetime) is built by
the writer, off the request's path, with one read of the system's randomness per batch."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from service_kit import db, pagination
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import audit_events

log = logging.getLogger("neural.authz.audit")
MAX_QUEUED = 100_000  # beyond this, events are dropped (and counted in the log), not held
BATCH = 500
BATCH_SECONDS = 0.2
LISTING = "authz_audit_events"  # what ListAuditEvents' page tokens page through


@dataclass(frozen=True)
class AuditEvent:
    id: str
    at: dt.datetime
    subject: str
    action: str
    target: str
    allowed: bool
    reason: str


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows(events: list[tuple[float, str, str, str, bool, str]]) -> list[dict[str, Any]]:
    """The audit_events rows of queued events, each with a random (version 4) UUID."""
    randomness = os.urandom(16 * len(events))
    return [
        {
            "id": str(uuid.UUID(bytes=randomness[16 * i : 16 * i + 16], version=4)),
            "at": dt.datetime.fromtimestamp(at, dt.UTC),
            "subject": subject,
            "action": action,
            "target": target,
            "allowed": allowed,
            "reason": reason,
        }
        for i, (at, subject, action, target, allowed, reason) in enumerate(events)
    ]


class AuditLog:
    def __init__(self, engine: AsyncEngine) -> None:
        self.sessions = db.sessions(engine)
        # (time.time(), subject, action, target, allowed, reason), cut to their columns
        self._queue: asyncio.Queue[tuple[float, str, str, str, bool, str]] = asyncio.Queue(
            MAX_QUEUED
        )
        self._writer: asyncio.Task[None] | None = None
        self._now = asyncio.Event()  # set by flush: write without waiting for the batch
        self.dropped = 0

    def record(
        self, subject: str, action: str, allowed: bool, reason: str = "", target: str = ""
    ) -> None:
        event = (
            time.time(),
            _cut(subject, 200),
            _cut(action, 300),
            _cut(target, 200),
            allowed,
            _cut(reason, 300),
        )
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning(
                    "audit queue full: events dropped", extra={"fields": {"n": self.dropped}}
                )
            return
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while True:
            # Gather for BATCH_SECONDS before each write, not only the first: under load,
            # writing at once whatever came in during the last write made a commit of a
            # handful of events, dozens of times a second.
            if self._queue.qsize() < BATCH and not self._now.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._now.wait(), BATCH_SECONDS)
            if self._queue.empty():
                return
            batch = _rows(
                [self._queue.get_nowait() for _ in range(min(BATCH, self._queue.qsize()))]
            )
            try:
                async with db.transaction(self.sessions) as s:
                    await s.execute(audit_events.insert(), batch)
            except Exception:
                log.exception("audit events could not be written (%d lost)", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def flush(self) -> None:
        self._now.set()
        try:
            await self._queue.join()
        finally:
            self._now.clear()

    async def close(self) -> None:
        await self.flush()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def list(
        self, subject: str | None, token: str = "", size: int = 0
    ) -> tuple[list[AuditEvent], str]:
        """One page, newest first, one subject's only unless None, and the next page's token
        ("" at the end). The token is bound to the subject: a token of another is refused."""
        query = select(audit_events)
        if subject is not None:
            query = query.where(audit_events.c.subject == subject)
        rows, next_token = await pagination.keyset_page(
            self.sessions,
            query,
            audit_events.c.at,
            audit_events.c.id,
            token,
            size,
            LISTING,
            (subject or "",),
        )
        return [
            AuditEvent(
                r.id,
                r.at if r.at.tzinfo else r.at.replace(tzinfo=dt.UTC),
                r.subject,
                r.action,
                r.target,
                r.allowed,
                r.reason,
            )
            for r in rows
        ], next_token
