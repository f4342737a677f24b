"""Wiring: settings, database, migrations, broker and the servicer, for the server and tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neural.v1 import compiler_pb2_grpc
from service_kit import db, webhooks
from service_kit.broker import setup_broker
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings
from sqlalchemy.ext.asyncio import AsyncEngine

from . import tables, tasks
from .exports import ExportQueue
from .registry import Registry
from .service import METHOD_ROLES, SERVICE, CompilerService

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_compiler"


@dataclass
class App:
    engine: AsyncEngine
    jobs: JobStore
    registry: Registry
    exports: ExportQueue
    spec: ServiceSpec

    async def close(self) -> None:
        self.exports.close()
        await self.engine.dispose()


async def build(settings: Settings) -> App:
    engine = db.make_engine(settings.database_url)
    await db.prepare(engine, MIGRATIONS, VERSION_TABLE, settings.migrate_at_start)
    setup_broker(settings)  # the server sends by name (tasks.py); the actors live in the worker
    sender = webhooks.WebhookSender(tasks.WEBHOOKS, tables.webhook_deliveries)
    jobs = JobStore(engine, tables.jobs, settings.redis_url, sender)
    registry = Registry(engine, settings.storage_dir)
    exports = ExportQueue(settings.limits(), settings.onnx_export_queue)
    service = CompilerService(
        registry,
        jobs,
        settings.limits(),
        tasks.COMPILE,
        exports,
        settings.max_watches_per_principal,
    )

    spec = ServiceSpec(
        "compiler",
        [(compiler_pb2_grpc.add_CompilerServiceServicer_to_server, service, SERVICE)],
        METHOD_ROLES,
        health_checks=dependency_checks(engine, settings.redis_url),
    )
    return App(engine, jobs, registry, exports, spec)
