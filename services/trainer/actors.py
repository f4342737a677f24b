"""The trainer worker's actors. Declaring them loads no settings and opens nothing: each body
loads the settings and imports its work when a message comes (`worker.py` is the process
that sets the broker up and imports this). The actor picks the work, training or search, so
the job runner knows nothing of search."""

from __future__ import annotations

import asyncio
from typing import Any

import dramatiq
from service_kit import webhooks
from service_kit.settings import load

from . import tables, tasks

MAX_RETRIES = 3
# The time limit is the worker's (`worker.py`, from NEURAL_TRAINING_TIME_LIMIT_S): a backstop
# behind the job's own deadline, which stops the training loop cleanly.
_OPTIONS: dict[str, Any] = {
    "max_retries": MAX_RETRIES,
    "min_backoff": 2_000,
    "max_backoff": 60_000,
    "on_retry_exhausted": tasks.GAVE_UP.actor_name,
}


@dramatiq.actor(actor_name=tasks.TRAIN.actor_name, queue_name=tasks.TRAIN.queue_name, **_OPTIONS)
def train_model(job_id: str) -> None:
    from .runner import JobRunner, run_job

    asyncio.run(run_job(load("trainer"), job_id, JobRunner.train, MAX_RETRIES + 1))


@dramatiq.actor(actor_name=tasks.SEARCH.actor_name, queue_name=tasks.SEARCH.queue_name, **_OPTIONS)
def search_model(job_id: str) -> None:
    from .runner import run_job
    from .search import run_search

    asyncio.run(run_job(load("trainer"), job_id, run_search, MAX_RETRIES + 1))


@dramatiq.actor(
    actor_name=tasks.GAVE_UP.actor_name, queue_name=tasks.GAVE_UP.queue_name, max_retries=10
)
def training_gave_up(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    from .runner import gave_up

    asyncio.run(gave_up(load("trainer"), message, retry_info))


# job events go out to their webhooks from the `trainer.webhooks` queue, off the training path
deliver_webhook = webhooks.declare_actor(
    "trainer", lambda: load("trainer").database_url, tables.jobs, tables.deliveries
)
