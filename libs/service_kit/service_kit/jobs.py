"""Job records (one table per owning service) and their live events over Redis pub/sub.

An RPC that starts long work creates a job row and enqueues a Dramatiq message; the worker
moves the job through its states and publishes each change; Watch* RPCs stream them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

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
    false,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from . import db, owners, pagination
from .errors import FailedPrecondition, NotFound, Unavailable, shown
from .fanout import Fanout
from .redis_clients import async_client
from .tasks import Sendable

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
        Column("result", String(200), nullable=False, default="", server_default=""),
        Column("error", Text, nullable=False, default="", server_default=""),
        Column("progress", Float, nullable=False, default=0.0, server_default="0"),
        Column("details", Text, nullable=False, default="{}", server_default="{}"),
        Column("attempts", Integer, nullable=False, default=0, server_default="0"),
        Column("cancel_requested", Boolean, nullable=False, default=False, server_default=false()),
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
    # Not a column: when the event this record comes with was published (see _as_of)
    event_at: dt.datetime | None = None


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


class JobEvents(Protocol):
    """Who else hears of a job's events (its webhooks: `webhooks.WebhookSender`)."""

    async def job_event(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rec: JobRecord,
        event: str,
        message: str = "",
    ) -> None: ...

    async def deliveries(
        self, sessions: async_sessionmaker[AsyncSession], job_ids: Iterable[str], per_job: int = 50
    ) -> Mapping[str, Sequence[Any]]: ...


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _snapshot(rec: JobRecord) -> dict[str, Any]:
    """What an event carries of its job as it was then (a watcher reading the row later may
    find it already past that event: a later epoch, or ended)."""
    return {
        "state": rec.state,
        "progress": rec.progress,
        "details": rec.details,
        "result": rec.result,
        "error": rec.error,
        "attempts": rec.attempts,
        "started_at": _iso(rec.started_at),
        "ended_at": _iso(rec.ended_at),
        "at": _iso(now()),
    }


def _as_of(rec: JobRecord, snapshot: Mapping[str, Any]) -> JobRecord:
    def when(value: Any) -> dt.datetime | None:
        return _utc(dt.datetime.fromisoformat(value)) if isinstance(value, str) else None

    try:
        return replace(
            rec,
            state=str(snapshot["state"]),
            progress=float(snapshot["progress"]),
            details=dict(snapshot["details"]),
            result=str(snapshot["result"]),
            error=str(snapshot["error"]),
            attempts=int(snapshot["attempts"]),
            started_at=when(snapshot["started_at"]),
            ended_at=when(snapshot["ended_at"]),
            event_at=when(snapshot.get("at")),
        )
    except (KeyError, TypeError, ValueError):  # published by an older version: the row it is
        return rec


def default_message(rec: JobRecord, event: str) -> str:
    """A message for an event that came without one (found by reading the row)."""
    if event == "completed":
        return rec.result or "succeeded"
    if event == "failed":
        return rec.error or "failed"
    if event == "started" and rec.attempts > 1:
        return f"resumed (attempt {rec.attempts})"
    return event


class JobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        table: Table,
        redis_url: str,
        webhooks: JobEvents | None = None,
    ) -> None:
        self.engine = engine
        self.table = table
        self.sessions = db.sessions(engine)
        self.redis_url = redis_url
        # with a sender, every event is also queued for the job's webhooks (see webhooks/)
        self.webhooks = webhooks
        self._redis: aioredis.Redis | None = None
        self._fanout: Fanout | None = None

    @property
    def fanout(self) -> Fanout:
        """The process's one subscription, shared by every watch of this store."""
        if self._fanout is None:
            self._fanout = Fanout(self.redis)
        return self._fanout

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            # health checks (a PING before reusing a connection idle for over a second)
            # keep a Redis restart from handing out dead pooled connections
            self._redis = async_client(
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

    async def enqueue(self, rec: JobRecord, actor: Sendable) -> None:
        """Put the job's message on its Dramatiq queue. When Redis will not take it, the job
        fails at once (nothing would ever run it) and the caller gets UNAVAILABLE."""
        try:
            await asyncio.to_thread(actor.send, rec.id)
        except Exception as exc:
            await self.finish(
                rec.id, FAILED, "could not be queued", error="the job queue is unavailable"
            )
            raise Unavailable("the job queue (Redis) is unavailable") from exc

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        async with self.sessions() as s:
            row = (await s.execute(select(self.table).where(self.table.c.id == job_id))).first()
        if row is None or not owners.visible(row.owner, owner):
            raise NotFound(f"no job {shown(job_id)}")
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
        query = owners.restrict(select(t), t.c.owner, owner)
        if kind:
            query = query.where(t.c.kind == kind)
        if state:
            query = query.where(t.c.state == state)
        # Training and search jobs share a table, not a listing.
        listing = f"{t.name}:{kind}" if kind else t.name
        rows, next_token = await pagination.newest_first(
            self.sessions, t, query, token, size, listing
        )
        return [_record(r) for r in rows], next_token

    async def update(
        self, job_id: str, event: str = "progress", message: str = "", **values: Any
    ) -> JobRecord:
        """Write `values` and tell watchers and webhooks of `event`."""
        if "details" in values:
            values["details"] = json.dumps(values["details"])
        t = self.table
        async with db.transaction(self.sessions) as s:
            # the row as written, in the same statement (no read after the write)
            row = (
                await s.execute(update(t).where(t.c.id == job_id).values(**values).returning(t))
            ).first()
        if row is None:
            raise NotFound(f"no job {shown(job_id)}")
        rec = _record(row)
        await self.publish(rec, event, message)
        await self._notify(rec, event, message)
        return rec

    async def save(self, job_id: str, **values: Any) -> None:
        """Write `values` without an event (progress within an epoch: readers poll the job)."""
        if "details" in values:
            values["details"] = json.dumps(values["details"])
        async with db.transaction(self.sessions) as s:
            await s.execute(update(self.table).where(self.table.c.id == job_id).values(**values))

    async def finish(
        self, job_id: str, state: str, message: str = "", **values: Any
    ) -> JobRecord | None:
        """Move a job that has not ended to the final `state`, with its event; None (and no
        event) when it had already ended. The check and the write are one statement, so of
        two racing ends (a worker and the retries' give-up, a cancel) exactly one wins."""
        assert state in TERMINAL, state
        if "details" in values:
            values["details"] = json.dumps(values["details"])
        t = self.table
        async with db.transaction(self.sessions) as s:
            done = await s.execute(
                update(t)
                .where(and_(t.c.id == job_id, t.c.state.not_in(TERMINAL)))
                .values(state=state, ended_at=now(), **values)
            )
        if done.rowcount != 1:
            return None
        rec = await self.get(job_id)
        event = _TERMINAL_EVENT[state]
        message = message or default_message(rec, event)
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

    async def deliveries(
        self, job_ids: list[str], per_job: int = 50
    ) -> Mapping[str, Sequence[Any]]:
        """Each job's newest webhook delivery attempts, oldest first (none without a sender)."""
        if self.webhooks is None:
            return {}
        return await self.webhooks.deliveries(self.sessions, job_ids, per_job)

    async def publish(self, rec: JobRecord, event: str, message: str = "") -> None:
        payload = {"id": rec.id, "event": event, "message": message, "job": _snapshot(rec)}
        # Watchers also poll the row, so a lost notification only delays them.
        with contextlib.suppress(aioredis.ConnectionError, aioredis.TimeoutError, OSError):
            await self.redis.publish(self.channel(rec.id), json.dumps(payload))

    async def watch(
        self, job_id: str, owner: str | None, poll_seconds: float = 1.0
    ) -> AsyncIterator[tuple[str, str, JobRecord]]:
        """(event, message, job) now and on every event, until the job ends. A published
        event comes with the job as it was then, so its epoch and metrics are its own; reading
        the row between notifications (or while Redis is away) finds the start and the end
        that a lost notification would hide. Every event has a message."""
        async with self.fanout.watch(self.channel(job_id)) as watcher:
            rec = await self.get(job_id, owner)
            first = _TERMINAL_EVENT.get(rec.state) or (
                "queued" if rec.state == QUEUED else "started"
            )
            yield first, default_message(rec, first), rec
            started = rec.attempts if rec.state == RUNNING else -1  # the start told of
            while rec.state not in TERMINAL:
                raw = await watcher.get(poll_seconds)  # None: a quiet poll_seconds
                data: dict[str, Any] | None = json.loads(raw) if raw is not None else None
                if data is not None:
                    event = str(data.get("event") or "progress")
                    then = _as_of(rec, data.get("job") or {})
                    if event == "started" and then.attempts <= started:
                        pass  # already told, from the row
                    elif event not in _TERMINAL_EVENT.values():  # the end comes from the row
                        if event == "started":
                            started = then.attempts
                        yield (
                            event,
                            str(data.get("message") or "") or default_message(then, event),
                            then,
                        )
                rec = await self.get(job_id)
                if rec.state in TERMINAL:
                    # the row is the truth: a notification may describe an earlier state
                    last = _TERMINAL_EVENT[rec.state]
                    message = ""
                    if data is not None and data.get("event") == last:
                        message = str(data.get("message") or "")
                    # the end is written just before it is published: its message (and any
                    # event published before it) may be on the way still
                    deadline = time.monotonic() + min(poll_seconds, 1.0)
                    while not message and (wait := deadline - time.monotonic()) > 0:
                        raw = await watcher.get(wait)
                        if raw is None:
                            break
                        late = json.loads(raw)
                        event = str(late.get("event") or "progress")
                        if event == last:
                            message = str(late.get("message") or "")
                            break
                        if event not in _TERMINAL_EVENT.values() and event != "started":
                            then = _as_of(rec, late.get("job") or {})
                            text = str(late.get("message") or "") or default_message(then, event)
                            yield event, text, then
                    yield last, message or default_message(rec, last), rec
                elif rec.state == RUNNING and rec.attempts > started:
                    started = rec.attempts
                    yield "started", default_message(rec, "started"), rec
