"""The service kit and the compiler's stores against real PostgreSQL, SQLite and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from neural_dsl import Limits
from service_kit import db
from service_kit.errors import FailedPrecondition, InvalidArgument, NotFound
from service_kit.jobs import JobStore
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from services.compiler import app as compiler_app
from services.compiler import tables
from services.compiler.compile_step import CompileInput, compile_artifact
from services.compiler.registry import Registry
from tests.services.conftest import REDIS_URL
from tests.waiting import until_async

pytestmark = pytest.mark.integration

SOURCE = """
network Small {
  input: (8, 8, 1)
  layers:
    Conv2D(4, (3,3), "relu")
    Flatten()
    Output(3, "softmax")
  loss: sparse_categorical_crossentropy
}
"""


async def migrated(url: str) -> AsyncEngine:
    engine = db.make_engine(url)
    await db.migrate(engine, compiler_app.MIGRATIONS, compiler_app.VERSION_TABLE)
    return engine


async def test_migrations_run_from_empty_and_again(db_url: str) -> None:
    engine = await migrated(db_url)
    # a second start changes nothing
    await db.migrate(engine, compiler_app.MIGRATIONS, compiler_app.VERSION_TABLE)
    async with engine.connect() as conn:
        names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    assert {"compiler_models", "compiler_jobs", "alembic_version_compiler"} <= names
    await engine.dispose()


async def test_job_store_pages_cancels_and_publishes(db_url: str) -> None:
    engine = await migrated(db_url)
    jobs = JobStore(engine, tables.jobs, REDIS_URL)
    created = [await jobs.create("compile", "alice", {"n": i}) for i in range(5)]
    await jobs.create("compile", "bob", {"n": 99})
    seen, token = [], ""
    while True:
        page, token = await jobs.list("alice", 2, token)
        seen += [r.id for r in page]
        if not token:
            break
    assert sorted(seen) == sorted(r.id for r in created) and len(seen) == 5
    with pytest.raises(NotFound):
        await jobs.get(created[0].id, "bob")
    with pytest.raises(InvalidArgument):
        await jobs.list("alice", 2, "not-a-token")
    cancelled = await jobs.cancel(created[0].id, "alice")
    assert cancelled.state == "cancelled"
    with pytest.raises(FailedPrecondition):
        await jobs.cancel(created[0].id, "alice")

    events: list[tuple[str, str]] = []

    async def watch() -> None:
        async for event, _, rec in jobs.watch(created[1].id, "alice", poll_seconds=0.2):
            events.append((event, rec.state))

    task = asyncio.create_task(watch())
    await until_async(lambda: events, 10, "the watch's first event")
    await jobs.update(created[1].id, "started", state="running")
    await jobs.update(created[1].id, "completed", state="succeeded", progress=1.0)
    await asyncio.wait_for(task, 10)
    assert events[0] == ("queued", "queued")
    assert events[-1] == ("completed", "succeeded")
    await jobs.redis.aclose()
    await engine.dispose()


async def test_registry_caches_lists_and_deletes(db_url: str, tmp_path: Path) -> None:
    engine = await migrated(db_url)
    registry = Registry(engine, tmp_path)
    req = CompileInput("alice", SOURCE, "pytorch", {}, "", "small")
    art = compile_artifact(req, Limits())
    row, cached = await registry.store(req, art)
    assert not cached and row.total_params == 40 + 144 * 3 + 3  # conv 3*3*1*4+4; 6*6*4 -> 3
    again, cached = await registry.store(req, art)
    assert cached and again.id == row.id
    other = CompileInput("alice", SOURCE, "onnx", {}, "", "small-onnx")
    onnx_row, _ = await registry.store(other, compile_artifact(other, Limits()))
    assert registry.path(onnx_row.id, "model.onnx").read_bytes()[:4] != b""
    page, token = await registry.list("alice", 1, "", "", "")
    assert len(page) == 1 and token
    page2, _ = await registry.list("alice", 1, token, "", "")
    assert {page[0].id, page2[0].id} == {row.id, onnx_row.id}
    only_onnx, _ = await registry.list("alice", 10, "", "", "onnx")
    assert [r.id for r in only_onnx] == [onnx_row.id]
    by_name, _ = await registry.list("alice", 10, "", "small-o", "")
    assert [r.id for r in by_name] == [onnx_row.id]
    assert (await registry.list("bob", 10, "", "", ""))[0] == []
    with pytest.raises(NotFound):
        await registry.get(row.id, "bob")
    await registry.delete(row.id, "alice")
    assert not registry.path(row.id, "model.py").exists()
    with pytest.raises(NotFound):
        await registry.get(row.id, None)
    await engine.dispose()
