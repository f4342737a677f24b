"""The compile worker: `dramatiq services.compiler.worker` pulls compile jobs from Redis, and
the webhook deliveries of their events (queue `compiler.webhooks`; a separate worker may take
those alone with `--queues compiler.webhooks`).

A wrong program fails its job once, with its diagnostics; an infrastructure failure
(database, Redis, disk) raises, and Dramatiq retries the message with backoff. Delivery is
at least once, so a redelivered job that already ended is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import dramatiq
from neural_dsl import DSLError, Limits
from service_kit import db, errors, logs, webhooks
from service_kit.broker import setup_broker
from service_kit.heartbeat import Heartbeat
from service_kit.jobs import CANCELLED, FAILED, RUNNING, SUCCEEDED, TERMINAL, JobStore, now
from service_kit.settings import load

from . import tables
from .registry import CompileInput, Registry, compile_artifact

settings = load("compiler")
broker = setup_broker(settings)  # before the actor below declares itself on it
if "dramatiq" in os.path.basename(sys.argv[0]):  # started by the dramatiq CLI
    logs.setup("compiler-worker", settings.log_level)
    broker.add_middleware(Heartbeat(settings.redis_url))  # listed by trainer.ListWorkers
log = logging.getLogger("neural.compiler.worker")

deliver_webhook = webhooks.declare_actor(
    "compiler", settings.database_url, tables.jobs, tables.webhook_deliveries
)
sender = webhooks.WebhookSender(deliver_webhook, tables.webhook_deliveries)


async def _run(job_id: str) -> None:
    engine = db.make_engine(settings.database_url)
    jobs = JobStore(engine, tables.jobs, settings.redis_url, sender)
    registry = Registry(engine, settings.storage_dir)
    try:
        rec = await jobs.get(job_id)
        if rec.state in TERMINAL:
            return  # cancelled while queued, or a redelivery of a finished job
        if rec.cancel_requested:
            await jobs.update(job_id, "cancelled", state=CANCELLED, ended_at=now())
            return
        await jobs.update(
            job_id,
            "started",
            state=RUNNING,
            started_at=now(),
            attempts=rec.attempts + 1,
            progress=0.1,
        )
        fields = {k: v for k, v in rec.request.items() if k != "webhooks"}
        req = CompileInput(owner=rec.owner, **fields)
        limits = Limits(max_source_bytes=settings.max_source_bytes)
        try:
            art = await asyncio.to_thread(compile_artifact, req, limits)
        except DSLError as exc:
            d = exc.first
            await jobs.update(
                job_id,
                "failed",
                d.message,
                state=FAILED,
                ended_at=now(),
                error=f"{d.line}:{d.column}: {d.message}",
                details={
                    "diagnostics": [
                        {"line": x.line, "column": x.column, "message": x.message, "stage": x.stage}
                        for x in exc.errors
                    ]
                },
            )
            return
        except errors.InvalidArgument as exc:
            await jobs.update(
                job_id, "failed", exc.message, state=FAILED, ended_at=now(), error=exc.message
            )
            return
        if (await jobs.get(job_id)).cancel_requested:
            await jobs.update(job_id, "cancelled", state=CANCELLED, ended_at=now())
            return
        row, cached = await registry.store(req, art)
        await jobs.update(
            job_id,
            "completed",
            f"models/{row.id}",
            state=SUCCEEDED,
            ended_at=now(),
            progress=1.0,
            result=f"models/{row.id}",
            details={"model_id": row.id, "cached": cached, "total_params": row.total_params},
        )
    finally:
        await jobs.redis.aclose()
        await engine.dispose()


@dramatiq.actor(
    queue_name="compile",
    max_retries=3,
    min_backoff=1_000,
    max_backoff=30_000,
    time_limit=10 * 60 * 1000,
)
def compile_model(job_id: str) -> None:
    asyncio.run(_run(job_id))
