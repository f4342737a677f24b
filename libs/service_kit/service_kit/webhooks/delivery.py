"""The worker's side: the `{prefix}_deliver_webhook` actor POSTs one event to one hook, records
the attempt, and raises dramatiq.Retry when trying again may help."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dramatiq
import httpx
from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import db
from ..settings import _int as env_int
from ..tasks import Task
from .address_guard import private_allowed_by_env, refusal
from .records import Delivery, record
from .signing import headers

log = logging.getLogger("neural.webhooks")

# Requests that may succeed when tried again; other non-2xx answers are final.
RETRYABLE_STATUS = frozenset({408, 429})


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
            allow_private=private_allowed_by_env(),
        )


@dataclass(frozen=True)
class Attempt:
    status_code: int = 0
    delivered: bool = False
    error: str = ""
    retry: bool = False


def delivery_task(prefix: str) -> Task:
    """The `{prefix}_deliver_webhook` messages, as a server sends them without the actor."""
    return Task(f"{prefix}.webhooks", f"{prefix}_deliver_webhook")


async def post(
    url: str,
    secret: str,
    body: bytes,
    event: str,
    delivery_id: str,
    options: DeliveryOptions,
) -> Attempt:
    """One POST: its outcome, and whether trying again may help."""
    refused = "" if options.allow_private else await refusal(url)
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
