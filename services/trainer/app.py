"""Wiring of the trainer: settings, database, migrations, broker and the servicer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from neural.v1 import trainer_pb2_grpc
from prometheus_client import REGISTRY
from service_kit import db, webhooks
from service_kit.broker import QueueDepth, setup_broker
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings, service_address
from sqlalchemy.ext.asyncio import AsyncEngine

from . import tables, tasks
from .dataset_store import DatasetStore
from .service import METHOD_ROLES, SERVICE, TrainerService

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_trainer"


@dataclass
class App:
    engine: AsyncEngine
    jobs: JobStore
    spec: ServiceSpec

    async def close(self) -> None:
        await self.engine.dispose()


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
    )
    return App(engine, jobs, spec)
