"""Wiring of the tracker: settings, database, migrations, artifact store and servicer."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from neural.v1 import tracker_pb2_grpc
from service_kit import db
from service_kit.server import ServiceSpec, dependency_checks
from service_kit.settings import Settings
from service_kit.warmup import NOBODY, missing, rehearsal
from sqlalchemy.ext.asyncio import AsyncEngine

from . import plots
from .artifacts import LocalArtifactStore
from .points.batches import Batch
from .service import METHOD_ROLES, SERVICE, TrackerService
from .store import TrackerStore
from .store.experiments import Experiments
from .store.params_and_tags import Params
from .store.runs import Runs

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_tracker"
# Search filters for the warm-up to parse and compile: each kind of term alone (SQLAlchemy
# caches a statement by its shape), then together.
WARMUP_FILTERS = (
    "",
    "metrics.acc > 0.5",
    'params.p = "x"',
    'tags.t = "x"',
    'status = "RUNNING"',
    'metrics.acc > 0.5 and params.p = "x" and tags.t like "x%" or run_name != "x"',
)


def _warm_plot() -> None:
    """Render a tiny plot: a first PlotMetrics would otherwise import matplotlib and load
    its fonts (seconds)."""
    curves = {"loss": {NOBODY: [(0.0, 1.0), (1.0, 0.5)]}}
    plots.plot_png(curves, {NOBODY: NOBODY}, ["loss"], False, 200, 150)


async def warm(engine: AsyncEngine, store: TrackerStore, service: TrackerService) -> None:
    """What a first call would otherwise pay for: the plot (in a thread: imports and CPU),
    the filter parser, the events' Redis connection, and the statements of the reads and of
    the inserts of an experiment, a run and a param (compiled once, then cached)."""
    await asyncio.to_thread(_warm_plot)
    for owner in (NOBODY, None):  # a user's listings, and an admin's (no owner filter)
        for text in WARMUP_FILTERS:
            await store.search.runs(owner, [NOBODY], text, [], 1, "")
        await store.search.runs(owner, [NOBODY], "", ["metrics.acc DESC"], 1, "")
        for name in ("", NOBODY):  # a listing, and one by name
            await store.experiments.page(owner, 1, "", name, False)
    await store.runs.counts([NOBODY])
    await store.runs.details([NOBODY])
    await store.history.overviews([NOBODY], ["loss"])
    await store.history.curves([NOBODY], ["loss"], 4)
    await missing(store.runs.get(NOBODY, NOBODY))
    await missing(store.experiments.get(NOBODY, NOBODY))
    # the point store's connections (and, for SQLite, its threads); an empty append
    # writes nothing
    await store.points.page(NOBODY, "loss", None, 0, 1)
    await store.points.count(NOBODY, "loss")
    await store.points.summaries(NOBODY, "loss", 8, 0, 0)  # a downsampled history's read
    await store.points.append(NOBODY, Batch((), (), (), ()), [])
    async with service.redis.pipeline(transaction=False) as pipe:
        await pipe.ping().execute()
    # Its code is loaded; its idle connection is not kept: a pooled connection that a Redis
    # restart has closed fails the next command, where a fresh one is opened as before. Only
    # the idle ones: the warm-up runs while the service serves, and closing a connection in
    # use (a watch's subscription) under its reader loses what is published meanwhile.
    await service.redis.connection_pool.disconnect(inuse_connections=False)
    async with rehearsal(engine) as sessions:
        owner_of: dict[str, str] = {}
        experiments = Experiments(sessions, owner_of)
        runs = Runs(sessions, experiments, owner_of)
        exp = await experiments.create(NOBODY, NOBODY)
        run = await runs.create(exp.id, NOBODY, NOBODY)
        await Params(sessions, runs).log(run.id, NOBODY, {NOBODY: NOBODY})


@dataclass
class App:
    engine: AsyncEngine
    store: TrackerStore
    spec: ServiceSpec

    async def close(self) -> None:
        await self.store.close()  # and its engine


async def migrate(settings: Settings) -> None:
    """The tracker's tables at head: what the parent of a process group does once, before
    its processes start (service_kit.process_group)."""
    engine = db.make_engine(settings.database_url, pool_size=1)
    try:
        await db.migrate(engine, MIGRATIONS, VERSION_TABLE)
    finally:
        await engine.dispose()


async def build(settings: Settings) -> App:
    engine = db.make_engine(settings.database_url, settings.db_pool_size)
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
        warmup=lambda: warm(engine, store, service),
    )
    return App(engine, store, spec)
