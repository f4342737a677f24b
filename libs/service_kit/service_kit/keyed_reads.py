"""Reads by key on the hot path (GetModel, GetRun, ...) at a fraction of a session's cost.

Through the async engine on SQLite (aiosqlite), one SELECT costs about 0.9 ms of CPU: the
session, a greenlet, and five trips to aiosqlite's thread (cursor, execute, fetch, close,
rollback), each one waking the event loop. A trip to a thread alone costs more than a keyed
read: a SELECT by primary key is a few pages of SQLite's cache, tens of microseconds, and
under the GIL a thread would not run beside the event loop anyway. So, on SQLite, a call's
statements run right here, on SQLAlchemy's plain sqlite3 driver (the same dialect as the
async engine's: the same rows, types and conversions), on a connection that only reads. In
WAL mode a reader never waits for a writer; should it meet a lock all the same (a recovery, a
checkpoint that truncates), it gives up after BUSY_S rather than hold up the event loop, and
the read goes through the async engine, which waits its 30 s in a thread. The statements are
built once, with bind parameters, so SQLAlchemy's compiled cache serves them.

Other databases (PostgreSQL: asyncpg has no thread to cross) run the statements on one
connection of the async engine. A database in memory is another one per connection: it too is
read through the async engine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Executable, Row, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

Query = tuple[Executable, Mapping[str, Any]]

BUSY_S = 0.05  # how long a read on the event loop waits for a lock before it moves to a thread


def _file_sqlite(engine: AsyncEngine) -> bool:
    url = engine.url
    database = url.database or ""
    return (
        url.get_backend_name() == "sqlite"
        and database not in ("", ":memory:")
        and "mode=memory" not in database
        and url.query.get("mode") != "memory"
    )


def _locked(exc: OperationalError) -> bool:
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)


class KeyedReads:
    """Runs a call's few SELECTs: on a SQLite file, on the event loop's own connection."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.direct = _file_sqlite(engine)
        # Made at the first read, let go when the async engine is disposed (and made again
        # by a read after that, as the async engine's own pool is). Every read runs on the
        # event loop's thread, one at a time, so they share one connection, kept open: a
        # checkout from the pool and back costs more than a keyed read.
        self._sync: Engine | None = None
        self._conn: Connection | None = None
        if self.direct:
            event.listen(engine.sync_engine, "engine_disposed", self._dispose)

    async def first(self, statement: Executable, params: Mapping[str, Any]) -> Row[Any] | None:
        """The first row of `statement`, or None."""
        (rows,) = await self.all((statement, params))
        return rows[0] if rows else None

    async def all(self, *queries: Query) -> list[Sequence[Row[Any]]]:
        """Every row of each (statement, parameters), in order."""
        if self.direct:
            try:
                return self._read(queries)
            except OperationalError as exc:
                if not _locked(exc):
                    raise
        async with self.engine.connect() as conn:
            return [(await conn.execute(s, dict(p))).all() for s, p in queries]

    def _read(self, queries: Sequence[Query]) -> list[Sequence[Row[Any]]]:
        conn = self._conn
        if conn is None:
            if self._sync is None:
                self._sync = self._start()
            conn = self._conn = self._sync.connect()
        try:
            rows = [conn.execute(s, dict(p)).all() for s, p in queries]
        except BaseException:
            self._conn = None  # a connection in doubt is not kept
            conn.close()
            raise
        # sqlite3 runs a SELECT outside any transaction (it begins one before a write only):
        # each read sees the newest commit. This ends SQLAlchemy's own record of one.
        conn.rollback()
        return rows

    def _start(self) -> Engine:
        url = self.engine.url.set(drivername="sqlite+pysqlite")
        sync = create_engine(url, connect_args={"timeout": BUSY_S}, pool_size=1)

        @event.listens_for(sync, "connect")
        def _read_only(dbapi_conn: Any, _: Any) -> None:  # a reader never writes
            dbapi_conn.execute("PRAGMA query_only = 1")

        return sync

    def _dispose(self, _engine: Any = None) -> None:
        conn, sync = self._conn, self._sync
        self._conn = self._sync = None
        if conn is not None:
            conn.close()
        if sync is not None:
            sync.dispose()


__all__ = ["KeyedReads"]
