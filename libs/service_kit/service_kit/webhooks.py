"""Webhooks: a job's events POSTed, signed, to the URLs its caller gave, off the job's path.

A service's JobStore hands each job event to a WebhookSender, which puts one Dramatiq message
per subscribed hook on the service's own `{prefix}.webhooks` queue (one Redis LPUSH each), so a
slow or dead receiver never slows the job. The `{prefix}_deliver_webhook` actor POSTs it and
records every attempt in `{prefix}_webhook_deliveries`; an attempt that may succeed later raises
dramatiq.Retry, and Dramatiq's Retries middleware sends it again after an exponential backoff
with jitter (min_backoff * 2**retries, times 1..2), up to max_retries times.

What a receiver gets:

    POST <url>
    Content-Type: application/json
    X-Neural-Event: started | progress | completed | failed | cancelled
    X-Neural-Delivery: <id>   the same on every retry of one event to one hook: de-duplicate on it
    X-Neural-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed by the hook's secret>

    {"delivery_id", "event", "message", "occurred_at", "timestamp", "attempt", "job": {...}}

`timestamp` is when this attempt was signed (a receiver may refuse old ones as replays);
`occurred_at` is when the event happened. Delivery is at least once, and a retried event may
arrive after a later one: order by `occurred_at` or the job's state.

Decisions:
- A secret is required, 16 to 256 characters. It is kept in the job's request (the actor needs
  it to sign, and it never travels in a queue message) and never returned by any RPC.
- 2xx is accepted. 408, 429, 5xx, timeouts and connection errors are retried. Anything else is
  permanent and not retried: a 4xx says the receiver refuses this request, and a 3xx cannot
  succeed because redirects are not followed (a hook may only reach the URL it was given).
- Progress events are sent at most once per `progress_interval` seconds per job.
- An event that cannot be queued (Redis down) is recorded as attempt 0, not delivered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import dramatiq
import httpx
from neural.v1 import common_pb2
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import db
from .errors import FieldViolation, InvalidArgument
from .jobs import JobRecord
from .settings import _int as env_int
from .tasks import Sendable, Task

log = logging.getLogger("neural.webhooks")

EVENTS = ("started", "progress", "completed", "failed", "cancelled")
MAX_HOOKS = 10
MAX_URL_CHARS = 2048
MIN_SECRET_CHARS, MAX_SECRET_CHARS = 16, 256
SIGNATURE_HEADER = "X-Neural-Signature"
EVENT_HEADER = "X-Neural-Event"
DELIVERY_HEADER = "X-Neural-Delivery"
# Requests that may succeed when tried again; other non-2xx answers are final.
RETRYABLE_STATUS = frozenset({408, 429})
# How long a job's update may wait for Redis to take its webhook messages.
ENQUEUE_TIMEOUT_S = 3.0
MAX_ERROR_CHARS = 500


def delivery_table(metadata: MetaData, prefix: str) -> Table:
    name = f"{prefix}_webhook_deliveries"
    return Table(
        name,
        metadata,
        Column(
            "id",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("job_id", String(36), nullable=False),
        # one per (event, hook), the same on every retry
        Column("delivery_id", String(36), nullable=False, index=True),
        Column("url", String(MAX_URL_CHARS), nullable=False),
        Column("event", String(16), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("status_code", Integer, nullable=False, default=0, server_default="0"),
        Column("delivered", Boolean, nullable=False, default=False, server_default=false()),
        Column("error", Text, nullable=False, default="", server_default=""),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_job", "job_id", "id"),
    )


# ------------------------------------------------------------------ validation


def validate(hooks: Sequence[Any], field: str = "webhooks") -> list[dict[str, Any]]:
    """Webhook messages (url, secret, events) -> the dicts a job's request stores.

    Raises InvalidArgument with one violation per problem."""
    violations: list[FieldViolation] = []
    if len(hooks) > MAX_HOOKS:
        violations.append(FieldViolation(field, f"at most {MAX_HOOKS} webhooks"))
    out = []
    for i, hook in enumerate(hooks[:MAX_HOOKS]):
        where = f"{field}[{i}]"
        problem = _url_problem(hook.url)
        if problem:
            violations.append(FieldViolation(f"{where}.url", problem))
        if not MIN_SECRET_CHARS <= len(hook.secret) <= MAX_SECRET_CHARS:
            violations.append(
                FieldViolation(
                    f"{where}.secret",
                    f"required: {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters",
                )
            )
        unknown = sorted(set(hook.events) - set(EVENTS))
        if unknown:
            violations.append(
                FieldViolation(
                    f"{where}.events",
                    f"unknown {', '.join(map(repr, unknown))}; known: {', '.join(EVENTS)}",
                )
            )
        events = [e for e in EVENTS if e in set(hook.events)]
        out.append({"url": hook.url, "secret": hook.secret, "events": events})
    if violations:
        raise InvalidArgument("invalid webhooks", violations)
    return out


def _url_problem(url: str) -> str:
    if not url:
        return "required"
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        # deliveries show their URL: credentials belong in the secret, not the URL
        return "must not contain credentials"
    return ""


def subscribed(hook: Mapping[str, Any], event: str) -> bool:
    return event in (hook.get("events") or EVENTS)


# ------------------------------------------------------------------ signing


def sign(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body` keyed by `secret`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when `header` (the X-Neural-Signature value) signs `body` with `secret`."""
    scheme, _, digest = header.partition("=")
    return scheme == "sha256" and hmac.compare_digest(digest, sign(secret, body))


def headers(secret: str, body: bytes, event: str, delivery_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": "neural-webhooks/1",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: f"sha256={sign(secret, body)}",
    }


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt (attempt 0: the event could not be queued)."""

    job_id: str
    delivery_id: str
    url: str
    event: str
    attempt: int
    status_code: int
    delivered: bool
    error: str
    time: dt.datetime


def to_proto(d: Delivery) -> common_pb2.WebhookDelivery:
    msg = common_pb2.WebhookDelivery(
        url=d.url,
        event=d.event,
        attempt=d.attempt,
        status_code=d.status_code,
        delivered=d.delivered,
        error=d.error,
    )
    msg.time.FromDatetime(d.time)
    return msg


async def deliveries(
    sessions: async_sessionmaker[AsyncSession],
    table: Table,
    job_ids: Iterable[str],
    per_job: int = 50,
) -> dict[str, list[Delivery]]:
    """The newest `per_job` attempts of each job, oldest first, by job id."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    t = table
    n = func.row_number().over(partition_by=t.c.job_id, order_by=t.c.id.desc()).label("n")
    inner = select(t, n).where(t.c.job_id.in_(ids)).subquery()
    query = select(inner).where(inner.c.n <= per_job).order_by(inner.c.job_id, inner.c.id)
    async with sessions() as s:
        rows = (await s.execute(query)).all()
    out: dict[str, list[Delivery]] = {}
    for r in rows:
        out.setdefault(r.job_id, []).append(
            Delivery(
                r.job_id,
                r.delivery_id,
                r.url,
                r.event,
                r.attempt,
                r.status_code,
                r.delivered,
                r.error,
                _utc(r.created_at),
            )
        )
    return out


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def record(sessions: async_sessionmaker[AsyncSession], table: Table, d: Delivery) -> None:
    values = asdict(d)
    values["created_at"] = values.pop("time")
    values["error"] = d.error[:MAX_ERROR_CHARS]
    async with db.transaction(sessions) as s:
        await s.execute(table.insert().values(**values))


# ------------------------------------------------------------------ sending (the job's side)


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
        if event in EVENTS and subscribed(h, event)
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


def delivery_task(prefix: str) -> Task:
    """The `{prefix}_deliver_webhook` messages, as a server sends them without the actor."""
    return Task(f"{prefix}.webhooks", f"{prefix}_deliver_webhook")


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


# ------------------------------------------------------------------ delivering (the worker's side)


@dataclass(frozen=True)
class DeliveryOptions:
    """Retries and timeouts; from NEURAL_WEBHOOK_* variables by default."""

    max_retries: int = 8
    min_backoff_ms: int = 1_000
    max_backoff_ms: int = 300_000
    timeout_ms: int = 5_000
    connect_timeout_ms: int = 2_000
    allow_private: bool = False  # may hooks reach loopback / private addresses?

    @classmethod
    def from_env(cls) -> DeliveryOptions:
        d = cls()
        return cls(
            max_retries=env_int("NEURAL_WEBHOOK_MAX_RETRIES", d.max_retries, 0, 50),
            min_backoff_ms=env_int("NEURAL_WEBHOOK_MIN_BACKOFF_MS", d.min_backoff_ms, 1, 3_600_000),
            max_backoff_ms=env_int(
                "NEURAL_WEBHOOK_MAX_BACKOFF_MS", d.max_backoff_ms, 1, 7 * 86_400_000
            ),
            timeout_ms=env_int("NEURAL_WEBHOOK_TIMEOUT_MS", d.timeout_ms, 10, 60_000),
            connect_timeout_ms=env_int(
                "NEURAL_WEBHOOK_CONNECT_TIMEOUT_MS", d.connect_timeout_ms, 10, 60_000
            ),
            allow_private=os.environ.get("NEURAL_WEBHOOK_ALLOW_PRIVATE", "") == "1",
        )


@dataclass(frozen=True)
class Attempt:
    status_code: int = 0
    delivered: bool = False
    error: str = ""
    retry: bool = False


async def _private_target(url: str, options: DeliveryOptions) -> str:
    """Why `url` may not be called (it resolves to a loopback, private, link-local or
    reserved address, e.g. a cloud metadata endpoint), or "" when it may. A server-side
    request to an address the caller picked must not reach the platform's own network;
    NEURAL_WEBHOOK_ALLOW_PRIVATE=1 lifts this for local development and tests. The check
    is made at each attempt (not at submit time), which narrows DNS rebinding to the
    instant between this lookup and the connection."""
    if options.allow_private:
        return ""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global or ip.is_multicast:
            return f"refused: {host} resolves to the non-public address {ip}"
    return ""


async def post(
    url: str,
    secret: str,
    body: bytes,
    event: str,
    delivery_id: str,
    options: DeliveryOptions,
) -> Attempt:
    """One POST: its outcome, and whether trying again may help."""
    refused = await _private_target(url, options)
    if refused:
        return Attempt(error=refused)
    total = options.timeout_ms / 1000
    timeout = httpx.Timeout(total, connect=min(options.connect_timeout_ms / 1000, total))
    try:
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False
        ) as client:

            async def status() -> int:
                # the answer's body is never read: a receiver cannot make us hold it
                async with client.stream(
                    "POST", url, content=body, headers=headers(secret, body, event, delivery_id)
                ) as response:
                    return response.status_code

            code = await asyncio.wait_for(status(), total)  # a deadline, not per read
    except (TimeoutError, httpx.TimeoutException):
        return Attempt(error=f"no answer within {total:g} s", retry=True)
    except httpx.HTTPError as exc:
        return Attempt(error=f"{type(exc).__name__}: {exc}", retry=True)
    if 200 <= code < 300:
        return Attempt(code, delivered=True)
    if code in RETRYABLE_STATUS or code >= 500:
        return Attempt(code, error=f"answered {code}", retry=True)
    reason = "redirects are not followed" if 300 <= code < 400 else "not retried"
    return Attempt(code, error=f"answered {code}: {reason}")


async def deliver(
    sessions: async_sessionmaker[AsyncSession],
    jobs_table: Table,
    table: Table,
    options: DeliveryOptions,
    job_id: str,
    index: int,
    event: str,
    delivery_id: str,
    payload: Mapping[str, Any],
) -> Attempt | None:
    """POST one event to one hook and record the attempt; None when the hook is gone."""
    async with sessions() as s:
        request = (
            await s.execute(select(jobs_table.c.request).where(jobs_table.c.id == job_id))
        ).scalar()
        attempt = (
            1
            + (
                await s.execute(
                    select(func.count())
                    .select_from(table)
                    .where(table.c.delivery_id == delivery_id)
                )
            ).scalar_one()
        )
    hooks = (json.loads(request).get("webhooks") or []) if request is not None else []
    if not 0 <= index < len(hooks):
        log.warning("webhook %s of job %s: no such hook any more", delivery_id, job_id)
        return None
    hook = hooks[index]
    body = json.dumps(
        {
            "delivery_id": delivery_id,
            "timestamp": dt.datetime.now(dt.UTC).isoformat(),
            "attempt": attempt,
            **payload,
        },
        separators=(",", ":"),
    ).encode()
    result = await post(hook["url"], hook["secret"], body, event, delivery_id, options)
    error = result.error
    if result.retry and attempt > options.max_retries:
        error += f"; gave up after {attempt} attempts"
    await record(
        sessions,
        table,
        Delivery(
            job_id,
            delivery_id,
            hook["url"],
            event,
            attempt,
            result.status_code,
            result.delivered,
            error,
            dt.datetime.now(dt.UTC),
        ),
    )
    return result


def declare_actor(
    prefix: str,
    database_url: str | Callable[[], str],
    jobs_table: Table,
    table: Table,
    options: DeliveryOptions | None = None,
    broker: dramatiq.Broker | None = None,
) -> dramatiq.Actor:
    """The `{prefix}_deliver_webhook` actor on the `{prefix}.webhooks` queue, declared on
    `broker` (the global one by default): the service's worker process consumes it.
    `database_url` may be a function, called per message, so that declaring the actor needs no
    settings."""
    opts = options or DeliveryOptions.from_env()
    task = delivery_task(prefix)

    async def run(job_id: str, index: int, event: str, delivery_id: str, payload: Any) -> None:
        engine = db.make_engine(database_url() if callable(database_url) else database_url)
        try:
            result = await deliver(
                db.sessions(engine),
                jobs_table,
                table,
                opts,
                job_id,
                index,
                event,
                delivery_id,
                payload,
            )
        finally:
            await engine.dispose()
        if result is not None and result.retry:
            # Retry (unlike another exception) is not logged as a crash; the Retries
            # middleware still counts it and backs off exponentially, with jitter.
            raise dramatiq.Retry(result.error)

    def deliver_webhook(
        job_id: str, index: int, event: str, delivery_id: str, payload: dict[str, Any]
    ) -> None:
        asyncio.run(run(job_id, index, event, delivery_id, payload))

    return dramatiq.actor(
        deliver_webhook,
        actor_name=task.actor_name,
        queue_name=task.queue_name,
        broker=broker,
        max_retries=opts.max_retries,
        min_backoff=opts.min_backoff_ms,
        max_backoff=opts.max_backoff_ms,
        time_limit=opts.timeout_ms + 60_000,
    )
