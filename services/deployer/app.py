"""Wiring of the deployer's server: settings, database, migrations, model fetcher, servicer.
Its controller (services.deployer.controller) runs as a process of its own."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path

from neural.v1 import deployer_pb2_grpc
from service_kit import db, webhooks
from service_kit.broker import setup_broker
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings, service_address
from service_kit.warmup import NOBODY, missing

from . import tables, tasks
from .models import ModelFetcher
from .service import METHOD_ROLES, ROLLOUT, SERVICE, DeployerService
from .store import DeployerStore

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_deployer"


async def warm(store: DeployerStore, jobs: JobStore) -> None:
    """What a first call would otherwise pay for: onnxruntime, which checks a new
    deployment's model (imported in a thread, not at start: seconds), and the statements of
    the reads (compiled once, then cached)."""
    await asyncio.to_thread(importlib.import_module, "onnxruntime")
    for owner in (NOBODY, None):  # a user's listings, and an admin's (no owner filter)
        await store.list(owner, None, "", 1)
        await jobs.list(owner, 1, "", None, ROLLOUT)
    await store.name_taken(NOBODY)
    await jobs.deliveries([NOBODY], 1)
    await missing(store.get(NOBODY, NOBODY))
    await missing(jobs.get(NOBODY, NOBODY))


@dataclass
class App:
    store: DeployerStore
    service: DeployerService
    spec: ServiceSpec
    publisher: asyncio.Task

    async def close(self) -> None:
        self.publisher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.publisher
        await self.service.close()
        await self.store.close()  # and its engine


async def build(settings: Settings) -> App:
    engine = db.make_engine(settings.database_url)
    await db.prepare(engine, MIGRATIONS, VERSION_TABLE, settings.migrate_at_start)
    store = DeployerStore(engine)
    fetcher = ModelFetcher(
        settings.storage_dir,
        service_address("tracker"),
        service_address("compiler"),
        settings.max_onnx_bytes,
    )
    setup_broker(settings)  # webhook messages are sent by name (tasks.py)
    sender = webhooks.WebhookSender(tasks.WEBHOOKS, tables.webhook_deliveries)
    jobs = JobStore(engine, tables.jobs, settings.redis_url, sender)
    service = DeployerService(
        store, fetcher, settings.redis_url, jobs, settings.max_watches_per_principal
    )
    spec = ServiceSpec(
        "deployer",
        [(deployer_pb2_grpc.add_DeployerServiceServicer_to_server, service, SERVICE)],
        METHOD_ROLES,
        health_checks=dependency_checks(engine, settings.redis_url),
        warmup=lambda: warm(store, jobs),
    )
    # the autoscaler's signal: this server's predictions in flight, published to Redis
    publisher = asyncio.create_task(service.inflight.publish(service.redis))
    return App(store, service, spec, publisher)
