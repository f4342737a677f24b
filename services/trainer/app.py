"""Wiring of the trainer: settings, database, migrations, broker and the servicer."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from neural.v1 import trainer_pb2_grpc
from neural_dsl import Limits
from prometheus_client import REGISTRY
from service_kit import db, webhooks
from service_kit.broker import QueueDepth, setup_broker
from service_kit.heartbeat import list_workers
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings, service_address
from service_kit.warmup import NOBODY, missing, rehearsal
from sqlalchemy.ext.asyncio import AsyncEngine

from . import datasets, plan, tables, tasks
from .dataset_store import DatasetStore
from .service import METHOD_ROLES, SERVICE, TrainerService

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_trainer"
# What the warm-up checks as SubmitTraining does: a first submit would otherwise build the
# DSL's parser and import scikit-learn for a builtin dataset (seconds).
WARMUP_SOURCE = """
network WarmUp {
  input: (4,)
  layers:
    Dense(4, "relu")
    Output(3, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
}
"""


@dataclass
class App:
    engine: AsyncEngine
    jobs: JobStore
    spec: ServiceSpec

    async def close(self) -> None:
        await self.engine.dispose()


def _warm_checks(limits: Limits) -> None:
    """SubmitTraining's and SubmitSearch's checks, on each builtin dataset and backend."""
    importlib.import_module("neural_dsl.hparams")  # what SubmitSearch imports
    for name in datasets.BUILTINS:
        datasets.builtin(name)
    network = plan.network_of(WARMUP_SOURCE, "", limits)
    for backend in ("pytorch", "tensorflow"):
        resolved = plan.check_fit(network, backend, {}, (4,), 3, limits)
        req = plan.TrainingRequest(WARMUP_SOURCE, backend, {"builtin": "iris"})
        plan.check_budget(resolved, req, (4,), limits)


async def warm(
    engine: AsyncEngine,
    service: TrainerService,
    jobs: JobStore,
    store: DatasetStore,
    sender: webhooks.WebhookSender,
    limits: Limits,
) -> None:
    """What a first call would otherwise pay for: the submit-time checks (in a thread:
    imports and CPU), the broker's connection, and the statements of the reads and of a
    job's insert (compiled once, then cached)."""
    await asyncio.to_thread(_warm_checks, limits)
    await asyncio.to_thread(dramatiq.get_broker().client.ping)
    for owner in (NOBODY, None):  # a user's listings, and an admin's (no owner filter)
        await jobs.list(owner, 1, "", None, "training")
        await store.list(owner, 1, "")
    await sender.deliveries(jobs.sessions, [NOBODY])
    await missing(jobs.get(NOBODY, NOBODY))
    await missing(store.get(NOBODY, NOBODY))
    await list_workers(service.redis)
    # Its code is loaded; its idle connection is not kept: a pooled connection that a Redis
    # restart has closed fails the next command, where a fresh one is opened as before. Only
    # the idle ones: the warm-up runs while the service serves, and closing a connection in
    # use (a watch's subscription) under its reader loses what is published meanwhile.
    await service.redis.connection_pool.disconnect(inuse_connections=False)
    async with rehearsal(engine) as sessions:
        rehearsed = JobStore(engine, jobs.table, jobs.redis_url)
        rehearsed.sessions = sessions
        await rehearsed.create("training", NOBODY, {})


async def build(settings: Settings) -> App:
    engine = db.make_engine(settings.database_url)
    await db.prepare(engine, MIGRATIONS, VERSION_TABLE, settings.migrate_at_start)
    setup_broker(settings)  # the server sends by name (tasks.py); the actors live in the worker
    sender = webhooks.WebhookSender(tasks.WEBHOOKS, tables.deliveries)
    jobs = JobStore(engine, tables.jobs, settings.redis_url, sender)
    store = DatasetStore(engine, settings.storage_dir, settings.max_upload_bytes)

    async def deliveries(job_id: str) -> list:
        found = await sender.deliveries(jobs.sessions, [job_id])
        return [webhooks.to_proto(d) for d in found.get(job_id, [])]

    service = TrainerService(
        jobs,
        store,
        settings.limits(),
        {"train_model": tasks.TRAIN, "search_model": tasks.SEARCH},
        service_address("compiler"),
        settings.redis_url,
        webhooks.validate,
        deliveries,
        settings.max_watches_per_principal,
    )

    with contextlib.suppress(ValueError):  # already registered: build() ran before here
        REGISTRY.register(QueueDepth(settings.redis_url, tasks.QUEUES))

    spec = ServiceSpec(
        "trainer",
        [(trainer_pb2_grpc.add_TrainerServiceServicer_to_server, service, SERVICE)],
        METHOD_ROLES,
        health_checks=dependency_checks(engine, settings.redis_url),
        warmup=lambda: warm(engine, service, jobs, store, sender, settings.limits()),
    )
    return App(engine, jobs, spec)
