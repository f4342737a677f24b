"""The tracker's use of its database: a GetRun is one transaction on one connection, and a
steady concurrent load runs on the pool's connections without opening new PostgreSQL sessions
(no overflow connections, which SQLAlchemy closes on return)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from neural.v1 import tracker_pb2
from service_kit import db
from service_kit.auth import Principal
from service_kit.interceptors import current_principal
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from services.tracker.artifacts import LocalArtifactStore
from services.tracker.service import TrackerService
from services.tracker.store import TrackerStore
from services.tracker.store.metrics import Point

from .conftest import PG_HOST, PG_USER, create_pg_database, drop_pg_database, redis_url
from .tracker_points_helper import log_points

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "tracker" / "migrations"


class Counts:
    """Transactions begun and connections checked out of the pool, on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.begins = self.checkouts = self.connects = 0
        sync = engine.sync_engine
        event.listen(sync, "begin", self._begin)
        event.listen(sync.pool, "checkout", self._checkout)
        event.listen(sync.pool, "connect", self._connect)

    def _begin(self, *_: Any) -> None:
        self.begins += 1

    def _checkout(self, *_: Any) -> None:
        self.checkouts += 1

    def _connect(self, *_: Any) -> None:
        self.connects += 1

    def reset(self) -> None:
        self.begins = self.checkouts = self.connects = 0


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    name, url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(name)


@pytest.fixture
def app_name() -> Iterator[str]:
    """A connection name of this test's own, for pg_stat_activity."""
    name = f"neural-test-{uuid.uuid4().hex[:8]}"
    db.name_connections(name)
    yield name
    db.name_connections("neural")


async def _service(url: str, tmp: Path) -> TrackerService:
    engine = db.make_engine(url)
    await db.migrate(engine, MIGRATIONS, "alembic_version_tracker")
    store = TrackerStore(engine)
    return TrackerService(store, LocalArtifactStore(tmp, 1 << 20), redis_url(9))


async def test_get_run_is_one_transaction(pg_url: str, tmp_path: Path) -> None:
    service = await _service(pg_url, tmp_path)
    store = service.store
    exp = await store.experiments.create("alice", "e")
    run = await store.runs.create(exp.id, "alice", "r")
    await store.params.log(run.id, "alice", {"lr": "0.1"})
    await store.tags.set(run.id, "alice", {"t": "x"})
    await log_points(store, run.id, "alice", [Point("loss", 0.5, 1)])
    counts = Counts(store.engine)
    current_principal.set(Principal("alice", "user"))
    got = await service.GetRun(tracker_pb2.GetRunRequest(id=run.id), None)
    # the run, its params, tags and latest metrics: all read, in one transaction
    assert (dict(got.params), dict(got.tags), [m.key for m in got.latest_metrics]) == (
        {"lr": "0.1"},
        {"t": "x"},
        ["loss"],
    )
    assert (counts.begins, counts.checkouts) == (1, 1)
    await store.close()


async def _backends(name: str) -> set[tuple[int, Any]]:
    conn = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres")
    try:
        rows = await conn.fetch(
            "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = $1", name
        )
    finally:
        await conn.close()
    return {(r["pid"], r["backend_start"]) for r in rows}


async def test_steady_load_opens_no_new_sessions(
    pg_url: str, tmp_path: Path, app_name: str
) -> None:
    service = await _service(pg_url, tmp_path)
    store = service.store
    exp = await store.experiments.create("alice", "e")
    runs = [await store.runs.create(exp.id, "alice", f"r{i}") for i in range(5)]
    counts = Counts(store.engine)
    current_principal.set(Principal("alice", "user"))
    readers = 5 * db.POOL_SIZE  # far more callers than connections: they queue for them

    async def reader(i: int) -> None:
        for n in range(20):
            request = tracker_pb2.GetRunRequest(id=runs[(i + n) % len(runs)].id)
            await service.GetRun(request, None)

    seen: set[tuple[int, Any]] = set()

    async def burst() -> None:
        """The readers, while pg_stat_activity is watched for the engine's sessions."""
        load = asyncio.gather(*(reader(i) for i in range(readers)))
        while not load.done():
            seen.update(await _backends(app_name))
            await asyncio.sleep(0.01)
        await load

    await burst()  # fills the pool
    after_first = await _backends(app_name)
    counts.reset()
    await burst()
    assert counts.checkouts >= readers * 20  # every call took a connection from the pool
    assert counts.connects == 0  # ... and none was opened for it
    assert await _backends(app_name) == after_first  # the same sessions, kept
    assert 0 < len(seen) <= db.POOL_SIZE  # never more sessions than the pool holds
    await store.close()
