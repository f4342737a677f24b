"""The training worker: `dramatiq services.trainer.worker` pulls training and search jobs.

A job trains in a thread while the event loop logs each finished epoch to the tracker,
publishes progress and watches for cancellation. Every epoch is checkpointed first, so a
worker killed mid-job loses at most one epoch: the broker redelivers the message, the job
resumes from its checkpoint, and only epochs the tracker has not seen are logged again.

A wrong program or dataset fails its job once, with the reason. Infrastructure failures
(database, Redis, tracker, disk) raise and Dramatiq retries the message with backoff; when
the retries run out, `training_gave_up` marks the job failed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from typing import Any

import dramatiq
from service_kit import logs, webhooks
from service_kit.broker import setup_broker
from service_kit.heartbeat import Heartbeat
from service_kit.jobs import FAILED, TERMINAL, now
from service_kit.settings import load

from . import tables
from .runner import JobRunner, Resources

settings = load("trainer")
broker = setup_broker(settings)  # before the actors below declare themselves on it
if "dramatiq" in os.path.basename(sys.argv[0]):  # started by the dramatiq CLI
    from dramatiq.middleware.prometheus import Prometheus

    logs.setup("trainer-worker", settings.log_level)
    broker.add_middleware(Heartbeat(settings.redis_url))
    broker.add_middleware(Prometheus())
log = logging.getLogger("neural.trainer.worker")
MAX_RETRIES = 3

# job events go out to their webhooks from the `trainer.webhooks` queue, off the training path
deliver_webhook = webhooks.declare_actor(
    "trainer", settings.database_url, tables.jobs, tables.deliveries
)
sender = webhooks.WebhookSender(deliver_webhook, tables.deliveries)


async def _run(job_id: str, kind: str) -> None:
    res = Resources.open(settings, sender)
    try:
        await JobRunner(res, job_id).run(kind)
    finally:
        await res.close()


async def _gave_up(job_id: str, error: str) -> None:
    res = Resources.open(settings, sender)
    try:
        rec = await res.jobs.get(job_id)
        if rec.state not in TERMINAL:
            await res.jobs.update(
                job_id,
                "failed",
                error,
                state=FAILED,
                ended_at=now(),
                error=f"gave up after {MAX_RETRIES + 1} attempts: {error}",
            )
        shutil.rmtree(res.workdir(job_id), ignore_errors=True)
    finally:
        await res.close()


_OPTIONS: dict[str, Any] = {
    "queue_name": "training",
    "max_retries": MAX_RETRIES,
    "min_backoff": 2_000,
    "max_backoff": 60_000,
    # our own deadline stops the loop cleanly; this one is the backstop
    "time_limit": (settings.training_time_limit_s + 300) * 1000,
    "on_retry_exhausted": "training_gave_up",
}


@dramatiq.actor(**_OPTIONS)
def train_model(job_id: str) -> None:
    asyncio.run(_run(job_id, "training"))


@dramatiq.actor(**_OPTIONS | {"actor_name": "search_model"})
def search_model(job_id: str) -> None:
    asyncio.run(_run(job_id, "search"))


@dramatiq.actor(queue_name="training", max_retries=10)
def training_gave_up(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    job_id = message["args"][0]
    trace = str(message.get("options", {}).get("traceback", "")).strip().splitlines()
    error = trace[-1] if trace else ""
    log.error("job gave up", extra={"fields": {"job_id": job_id, "error": error}})
    asyncio.run(_gave_up(job_id, error or "infrastructure failure"))
