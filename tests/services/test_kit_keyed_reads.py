"""The kit's keyed reads (`service_kit.keyed_reads`): the rows a session gives, every commit
seen at once, on SQLite and PostgreSQL; on a SQLite file, reads that never write, and a read
that meets a lock waits for it through the async engine rather than fail."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from service_kit import db
from service_kit.keyed_reads import KeyedReads
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    event,
    select,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from tests.waiting import until_async

pytestmark = pytest.mark.integration

meta = MetaData()
items = Table(
    "keyed_items",
    meta,
    Column("id", String(36), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("n", BigInteger, nullable=False),
)
BY_ID = select(items).where(items.c.id == bindparam("id"))
OF_IDS = select(items).where(items.c.id.in_(bindparam("ids", expanding=True))).order_by(items.c.id)
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)


async def test_reads_give_the_rows_a_session_gives_and_see_each_commit(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
        reads = KeyedReads(engine)
        assert reads.direct == db_url.startswith("sqlite")
        assert await reads.first(BY_ID, {"id": "a"}) is None
        async with db.transaction(db.sessions(engine)) as s:
            await s.execute(
                items.insert(), [{"id": "a", "at": T0, "n": 1}, {"id": "b", "at": T0, "n": 2}]
            )
        got = await reads.first(BY_ID, {"id": "a"})
        async with db.sessions(engine)() as s:
            expected = (await s.execute(BY_ID, {"id": "a"})).first()
        assert got is not None and expected is not None
        assert tuple(got) == tuple(expected)
        assert got.at.tzinfo == expected.at.tzinfo  # the same types, converted the same way
        one, many = await reads.all((BY_ID, {"id": "b"}), (OF_IDS, {"ids": ["a", "b", "zz"]}))
        assert [r.n for r in one] == [2]
        assert [r.id for r in many] == ["a", "b"]
        # A service's close disposes of the engine; a read after it starts over.
        await engine.dispose()
        again = await reads.first(BY_ID, {"id": "b"})
        assert again is not None and again.n == 2
    finally:
        await engine.dispose()


async def test_a_sqlite_reader_never_writes(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
        reads = KeyedReads(engine)
        with pytest.raises(OperationalError, match="readonly"):
            await reads.all((items.insert(), {"id": "x", "at": T0, "n": 1}))
        assert await reads.first(BY_ID, {"id": "x"}) is None
    finally:
        await engine.dispose()


async def test_a_read_that_meets_a_lock_waits_for_it_through_the_async_engine(
    tmp_path: Path,
) -> None:
    """Without WAL (which never makes a reader wait), another connection's exclusive lock
    keeps readers out: the read on the event loop gives up at once, and the async engine's
    waits in its thread until the lock is gone."""
    path = tmp_path / "locked.db"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 30})
    statements: list[str] = []

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _seen(*args: Any) -> None:
        statements.append(args[2])

    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
            await conn.execute(items.insert(), [{"id": "a", "at": T0, "n": 7}])
        reads = KeyedReads(engine)
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            statements.clear()
            read = asyncio.create_task(reads.first(BY_ID, {"id": "a"}))
            await until_async(lambda: statements, 10, "the read to go to the async engine")
            assert not read.done()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        row = await asyncio.wait_for(read, 10)
        assert row is not None and row.n == 7
    finally:
        await engine.dispose()
