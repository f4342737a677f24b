"""Wiring: settings, database, migrations, broker and the servicer, for the server and tests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import dramatiq
from neural.v1 import compiler_pb2_grpc
from neural_dsl import Limits, check
from service_kit import db, webhooks
from service_kit.broker import setup_broker
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings
from service_kit.warmup import NOBODY, missing, rehearsal
from sqlalchemy.ext.asyncio import AsyncEngine

from . import tables, tasks
from .compile_step import CompileInput, check_request, compile_artifact
from .exports import ExportQueue
from .registry import Registry
from .service import METHOD_ROLES, SERVICE, CompilerService

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_compiler"
# What the warm-up validates and compiles: a first Validate or Compile would otherwise build
# the DSL's parser and load the code generators.
WARMUP_SOURCE = (
    'network WarmUp {\n  input: (4,)\n  layers:\n    Dense(4, "relu")\n    Output(2)\n}\n'
)


@dataclass
class App:
    engine: AsyncEngine
    jobs: JobStore
    registry: Registry
    exports: ExportQueue
    spec: ServiceSpec

    async def close(self) -> None:
        await self.engine.dispose()


def _warm_dsl(limits: Limits) -> None:
    check(WARMUP_SOURCE, limits)
    for backend in ("pytorch", "tensorflow", "onnx"):
        req = CompileInput(NOBODY, WARMUP_SOURCE, backend, {}, "", "")
        check_request(req, limits)
        compile_artifact(req, limits)


async def warm(engine: AsyncEngine, registry: Registry, jobs: JobStore, limits: Limits) -> None:
    """What a first call would otherwise pay for: the DSL (in a thread: CPU-bound), the
    broker's connection, and the statements of the reads and of a job's insert (compiled
    once by SQLAlchemy, then cached)."""
    await asyncio.to_thread(_warm_dsl, limits)
    await asyncio.to_thread(dramatiq.get_broker().client.ping)
    await registry.find(NOBODY)
    for owner in (NOBODY, None):  # a user's listings, and an admin's (no owner filter)
        await registry.list(owner, 1, "", "", "")
        await jobs.list(owner, 1, "")
    await jobs.deliveries([NOBODY], 1)
    await missing(registry.get(NOBODY, NOBODY))
    await missing(jobs.get(NOBODY, NOBODY))
    async with rehearsal(engine) as sessions:
        rehearsed = JobStore(engine, jobs.table, jobs.redis_url)
        rehearsed.sessions = sessions
        await rehearsed.create("compile", NOBODY, {})


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
        warmup=lambda: warm(engine, registry, jobs, settings.limits()),
    )
    return App(engine, jobs, registry, exports, spec)
