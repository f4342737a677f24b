"""One attempt at one async compile job, run by the `compile_model` actor.

A wrong program fails its job once, with its diagnostics; an infrastructure failure
(database, Redis, disk) raises, and Dramatiq retries the message with backoff. The job's way
through its states is the service kit's `Lifecycle`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from neural_dsl import DSLError
from service_kit import db, errors, lifecycle, webhooks
from service_kit.jobs import JobStore
from service_kit.lifecycle import Lifecycle
from service_kit.settings import Settings
from sqlalchemy.ext.asyncio import AsyncEngine

from . import tables, tasks
from .compile_step import CompileInput, compile_artifact
from .registry import Registry


def job_store(settings: Settings, engine: AsyncEngine) -> JobStore:
    sender = webhooks.WebhookSender(tasks.WEBHOOKS, tables.webhook_deliveries)
    return JobStore(engine, tables.jobs, settings.redis_url, sender)


async def run(settings: Settings, job_id: str, max_attempts: int) -> None:
    engine = db.make_engine(settings.database_url)
    jobs = job_store(settings, engine)
    registry = Registry(engine, settings.storage_dir)
    life = Lifecycle(jobs, job_id, max_attempts)
    try:
        rec = await life.start(progress=0.1)
        if rec is None:
            return
        fields = {k: v for k, v in rec.request.items() if k != "webhooks"}
        req = CompileInput(owner=rec.owner, **fields)
        try:
            art = await asyncio.to_thread(compile_artifact, req, settings.limits())
        except DSLError as exc:
            d = exc.first
            await life.fail(
                f"{d.line}:{d.column}: {d.message}",
                d.message,
                details={
                    "diagnostics": [
                        {"line": x.line, "column": x.column, "message": x.message, "stage": x.stage}
                        for x in exc.errors
                    ]
                },
            )
            return
        except errors.InvalidArgument as exc:
            await life.fail(exc.message)
            return
        if await life.cancel_requested():
            await life.cancel()
            return
        row, cached = await registry.store(req, art)
        await life.succeed(
            f"models/{row.id}",
            progress=1.0,
            details={"model_id": row.id, "cached": cached, "total_params": row.total_params},
        )
    finally:
        await jobs.redis.aclose()
        await engine.dispose()


async def gave_up(
    settings: Settings, message: Mapping[str, Any], retry_info: Mapping[str, Any]
) -> None:
    engine = db.make_engine(settings.database_url)
    jobs = job_store(settings, engine)
    try:
        await lifecycle.give_up(jobs, message, retry_info)
    finally:
        await jobs.redis.aclose()
        await engine.dispose()
