"""The compiler worker's actors. Declaring them loads no settings and opens nothing: each
body loads the settings and imports its work when a message comes (`worker.py` is the
process that sets the broker up and imports this)."""

from __future__ import annotations

import asyncio
from typing import Any

import dramatiq
from service_kit import webhooks
from service_kit.settings import load

from . import tables, tasks

MAX_RETRIES = 3


@dramatiq.actor(
    actor_name=tasks.COMPILE.actor_name,
    queue_name=tasks.COMPILE.queue_name,
    max_retries=MAX_RETRIES,
    min_backoff=1_000,
    max_backoff=30_000,
    time_limit=10 * 60 * 1000,
    on_retry_exhausted=tasks.COMPILE_GAVE_UP.actor_name,
)
def compile_model(job_id: str) -> None:
    from .compile_job import run

    asyncio.run(run(load("compiler"), job_id, MAX_RETRIES + 1))


@dramatiq.actor(
    actor_name=tasks.COMPILE_GAVE_UP.actor_name,
    queue_name=tasks.COMPILE_GAVE_UP.queue_name,
    max_retries=10,
)
def compile_gave_up(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    from .compile_job import gave_up

    asyncio.run(gave_up(load("compiler"), message, retry_info))


deliver_webhook = webhooks.declare_actor(
    "compiler",
    lambda: load("compiler").database_url,
    tables.jobs,
    tables.webhook_deliveries,
)
