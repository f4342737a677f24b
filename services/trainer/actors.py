"""The trainer worker's actors. Declaring them loads no settings and opens nothing: each body
loads the settings and imports its work when a message comes (`worker.py` is the process
that sets the broker up and imports this). The actor picks the work, training or search, so
the job runner knows nothing of search. Each worker thread runs its messages on an event loop
and resources of its own, kept from one message to the next (`LOOP`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dramatiq
from service_kit import webhooks
from service_kit.actor_loop import ThreadLoop
from service_kit.settings import Settings, load

from . import tables, tasks

if TYPE_CHECKING:
    from .runner import Resources

MAX_RETRIES = 3
# The time limit is the worker's (`worker.py`, from NEURAL_TRAINING_TIME_LIMIT_S): a backstop
# behind the job's own deadline, which stops the training loop cleanly.
_OPTIONS: dict[str, Any] = {
    "max_retries": MAX_RETRIES,
    "min_backoff": 2_000,
    "max_backoff": 60_000,
    "on_retry_exhausted": tasks.GAVE_UP.actor_name,
}


def _open(settings: Settings) -> Resources:
    from .runner import open_resources

    return open_resources(settings)


async def _close(res: Resources) -> None:
    await res.close()


LOOP: ThreadLoop[Resources] = ThreadLoop(_open, _close)


@dramatiq.actor(actor_name=tasks.TRAIN.actor_name, queue_name=tasks.TRAIN.queue_name, **_OPTIONS)
def train_model(job_id: str) -> None:
    from .runner import JobRunner, run_job

    LOOP.run(load("trainer"), lambda res: run_job(res, job_id, JobRunner.train, MAX_RETRIES + 1))


@dramatiq.actor(actor_name=tasks.SEARCH.actor_name, queue_name=tasks.SEARCH.queue_name, **_OPTIONS)
def search_model(job_id: str) -> None:
    from .runner import run_job
    from .search import run_search

    LOOP.run(load("trainer"), lambda res: run_job(res, job_id, run_search, MAX_RETRIES + 1))


@dramatiq.actor(
    actor_name=tasks.GAVE_UP.actor_name, queue_name=tasks.GAVE_UP.queue_name, max_retries=10
)
def training_gave_up(message: dict[str, Any], retry_info: dict[str, Any]) -> None:
    from .runner import gave_up

    LOOP.run(load("trainer"), lambda res: gave_up(res, message, retry_info))


# job events go out to their webhooks from the `trainer.webhooks` queue, off the training path
deliver_webhook = webhooks.declare_actor(
    "trainer", lambda: load("trainer").database_url, tables.jobs, tables.deliveries
)
