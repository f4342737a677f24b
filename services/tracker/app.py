"""Wiring of the tracker: settings, database, migrations, artifact store and servicer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neural.v1 import tracker_pb2_grpc
from service_kit import db
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings
from sqlalchemy.ext.asyncio import AsyncEngine

from .artifacts import LocalArtifactStore
from .service import METHOD_ROLES, SERVICE, TrackerService
from .store import TrackerStore

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_tracker"


@dataclass
class App:
    engine: AsyncEngine
    store: TrackerStore
    spec: ServiceSpec

    async def close(self) -> None:
        await self.store.close()  # and its engine


async def build(settings: Settings) -> App:
    engine = db.make_engine(settings.database_url)
    await db.prepare(engine, MIGRATIONS, VERSION_TABLE, settings.migrate_at_start)
    store = TrackerStore(engine)
    service = TrackerService(
        store,
        LocalArtifactStore(settings.storage_dir / "tracker", settings.max_upload_bytes),
        settings.redis_url,
        settings.max_watches_per_principal,
    )

    spec = ServiceSpec(
        "tracker",
        [(tracker_pb2_grpc.add_TrackerServiceServicer_to_server, service, SERVICE)],
        METHOD_ROLES,
        health_checks=dependency_checks(engine, settings.redis_url),
    )
    return App(engine, store, spec)
