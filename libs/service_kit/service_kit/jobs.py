"""Job records (one table per owning service) and their live events over Redis pub/sub.

An RPC that starts long work creates a job row and enqueues a Dramatiq message; the worker
moves the job through its states and publishes each change; Watch* RPCs stream them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from . import db, pagination
from .errors import FailedPrecondition, NotFound, Unavailable

if TYPE_CHECKING:
    from .webhooks import Delivery, WebhookSender

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
_TERMINAL_EVENT = {SUCCEEDED: "completed", FAILED: "failed", CANCELLED: "cancelled"}


def job_table(metadata: MetaData, prefix: str) -> Table:
    return Table(
        f"{prefix}_jobs",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("kind", String(32), nullable=False),
        Column("state", String(16), nullable=False, index=True),
        Column("owner", String(200), nullable=False, index=True),
        Column("request", Text, nullable=False),
        Column("result", String(200), nullable=False, default=""),
        Column("error", Text, nullable=False, default=""),
        Column("progress", Float, nullable=False, default=0.0),
        Column("details", Text, nullable=False, default="{}"),
        Column("attempts", Integer, nullable=False, default=0),
        Column("cancel_requested", Boolean, nullable=False, default=False),
        Column("created_at", DateTime(timezone=True), nullable=False, index=True),
        Column("started_at", DateTime(timezone=True)),
        Column("ended_at", DateTime(timezone=True)),
    )


@dataclass
class JobRecord:
    id: str
    kind: str
    state: str
    owner: str
    request: dict[str, Any]
    result: str = ""
    error: str = ""
    progress: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    cancel_requested: bool = False
    created_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None


def _record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        kind=row.kind,
        state=row.state,
        owner=row.owner,
        request=json.loads(row.request),
        result=row.result,
        error=row.error,
        progress=row.progress,
        details=json.loads(row.details),
        attempts=row.attempts,
        cancel_requested=row.cancel_requested,
        created_at=_utc(row.created_at),
        started_at=_utc(row.started_at),
        ended_at=_utc(row.ended_at),
    )


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class JobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        redis_url: str,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.engine = engine
        self.table = table
        self.sessions = db.sessions(engine)
        self.redis_url = redis_url
        # with a sender, every event is also queued for the job's webhooks (see webhooks.py)
        self.webhooks = webhooks
        self._redis: aioredis.Redis | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            # health checks (a PING before reusing a connection idle for over a second)
            # keep a Redis restart from handing out dead pooled connections
            self._redis = aioredis.from_url(
                self.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=1
            )
        return self._redis

    def channel(self, job_id: str) -> str:
        return f"neural:{self.table.name}:{job_id}"

    async def create(self, kind: str, owner: str, request: dict[str, Any]) -> JobRecord:
        rec = JobRecord(str(uuid.uuid4()), kind, QUEUED, owner, request, created_at=now())
        async with db.transaction(self.sessions) as s:
            await s.execute(
                self.table.insert().values(
                    id=rec.id,
                    kind=kind,
                    state=QUEUED,
                    owner=owner,
                    request=json.dumps(request),
                    result="",
                    error="",
                    progress=0.0,
                    details="{}",
                    attempts=0,
                    cancel_requested=False,
                    created_at=rec.created_at,
                )
            )
        return rec

    async def enqueue(self, rec: JobRecord, actor: Any) -> None:
        """Put the job's message on its Dramatiq queue. When Redis will not take it, the job
        fails at once (nothing would ever run it) and the caller gets UNAVAILABLE."""
        try:
            await asyncio.to_thread(actor.send, rec.id)
        except Exception as exc:
            await self.update(
                rec.id,
                "failed",
                "could not be queued",
                state=FAILED,
                ended_at=now(),
                error="the job queue is unavailable",
            )
            raise Unavailable("the job queue (Redis) is unavailable") from exc

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        async with self.sessions() as s:
            row = (await s.execute(select(self.table).where(self.table.c.id == job_id))).first()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(f"no job {job_id!r}")
        return _record(row)

    async def list(
        self,
        owner: str | None,
        size: int,
        token: str,
        state: str | None = None,
        kind: str | None = None,
    ) -> tuple[list[JobRecord], str]:
        t = self.table
        query = select(t)
        if owner is not None:
            query = query.where(t.c.owner == owner)
        if kind:
            query = query.where(t.c.kind == kind)
        if state:
            query = query.where(t.c.state == state)
        rows, next_token = await pagination.newest_first(self.sessions, t, query, token, size)
        return [_record(r) for r in rows], next_token

    async def update(
        self, job_id: str, event: str = "progress", message: str = "", **values: Any
    ) -> JobRecord:
        if "details" in values:
            values["details"] = json.dumps(values["details"])
        async with db.transaction(self.sessions) as s:
            await s.execute(update(self.table).where(self.table.c.id == job_id).values(**values))
        rec = await self.get(job_id)
        await self.publish(rec, event, message)
        await self._notify(rec, event, message)
        return rec

    async def cancel(self, job_id: str, owner: str | None) -> JobRecord:
        rec = await self.get(job_id, owner)
        if rec.state in TERMINAL:
            raise FailedPrecondition(f"job {job_id} has already ended ({rec.state})")
        t = self.table
        async with db.transaction(self.sessions) as s:
            # A queued job is cancelled at once; a running one stops at its next check.
            await s.execute(
                update(t)
                .where(and_(t.c.id == job_id, t.c.state == QUEUED))
                .values(state=CANCELLED, ended_at=now(), cancel_requested=True)
            )
            await s.execute(
                update(t)
                .where(and_(t.c.id == job_id, t.c.state == RUNNING))
                .values(cancel_requested=True)
            )
        rec = await self.get(job_id)
        if rec.state == CANCELLED:
            await self.publish(rec, "cancelled", "cancelled before it started")
            await self._notify(rec, "cancelled", "cancelled before it started")
        return rec

    async def _notify(self, rec: JobRecord, event: str, message: str) -> None:
        if self.webhooks is not None:
            await self.webhooks.job_event(self.sessions, rec, event, message)

    async def deliveries(self, job_ids: list[str], per_job: int = 50) -> dict[str, list[Delivery]]:
        """Each job's newest webhook delivery attempts, oldest first (none without a sender)."""
        if self.webhooks is None:
            return {}
        return await self.webhooks.deliveries(self.sessions, job_ids, per_job)

    async def publish(self, rec: JobRecord, event: str, message: str = "") -> None:
        payload = {"id": rec.id, "event": event, "message": message, "state": rec.state}
        # Watchers also poll the row, so a lost notification only delays them.
        with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            await self.redis.publish(self.channel(rec.id), json.dumps(payload))

    async def _subscribe(self, pubsub: Any, job_id: str) -> bool:
        # twice: after a Redis restart the first try may meet a dead pooled connection
        for _ in range(2):
            try:
                await pubsub.subscribe(self.channel(job_id))
                return True
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                continue
        return False

    async def watch(
        self, job_id: str, owner: str | None, poll_seconds: float = 1.0
    ) -> AsyncIterator[tuple[str, str, JobRecord]]:
        """(event, message, job) now and on every change, until the job ends."""
        pubsub = self.redis.pubsub()
        subscribed = await self._subscribe(pubsub, job_id)
        try:
            rec = await self.get(job_id, owner)
            yield (
                (
                    rec.state
                    if rec.state in TERMINAL
                    else "queued"
                    if rec.state == QUEUED
                    else "started"
                ),
                "",
                rec,
            )
            last = (rec.state, rec.progress)
            while rec.state not in TERMINAL:
                event, message = "progress", ""
                if subscribed:
                    try:
                        msg = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=poll_seconds
                        )
                    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                        msg, subscribed = None, False
                        # Redis restarted: drop the idle pooled connections, all dead now
                        with contextlib.suppress(Exception):
                            await self.redis.connection_pool.disconnect(inuse_connections=False)
                    if msg:
                        data = json.loads(msg["data"])
                        event, message = data.get("event", "progress"), data.get("message", "")
                else:  # poll, and try to get the notifications back (Redis restarted)
                    await asyncio.sleep(poll_seconds)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                    pubsub = self.redis.pubsub()
                    subscribed = await self._subscribe(pubsub, job_id)
                rec = await self.get(job_id)
                if rec.state in TERMINAL:
                    if message and event not in _TERMINAL_EVENT.values():
                        yield event, message, rec  # it happened just before the end
                        message = ""
                    # the row is the truth: a notification may describe an earlier state
                    event = _TERMINAL_EVENT[rec.state]
                elif rec.state == RUNNING and last[0] == QUEUED:
                    event = "started"
                # every published event counts (a trial ends at the same progress its last
                # epoch reported); without one, only a change does
                if (rec.state, rec.progress) != last or event != "progress" or message:
                    last = (rec.state, rec.progress)
                    yield event, message, rec
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
