"""The deployer's webhook deliveries (queue `deployer.webhooks`): the controller consumes them
in process (`start`); `dramatiq services.deployer.worker` may take them in a process of its own.

Importing this module declares the actor on the global broker, so the broker is set first."""

from __future__ import annotations

import dramatiq
from service_kit import webhooks
from service_kit.broker import setup_broker
from service_kit.settings import load

from . import tables, tasks

broker = setup_broker(load("deployer"))  # before the actor declares itself on it

deliver_webhook = webhooks.declare_actor(
    "deployer",
    lambda: load("deployer").database_url,
    tables.jobs,
    tables.webhook_deliveries,
)


def start(threads: int = 2) -> dramatiq.Worker:
    """A worker for the webhook queue in this process, in threads of its own; `stop()` it."""
    worker = dramatiq.Worker(broker, queues=set(tasks.QUEUES), worker_threads=threads)
    worker.start()
    return worker
