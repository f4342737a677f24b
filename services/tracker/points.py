"""Metric points straight on the database driver: the tracker's two hot paths.

Logging a batch and reading a page of a series are most of the tracker's traffic, and through
SQLAlchemy each cost more in Python than in the database: a pool checkout with a ping, a
transaction of several round trips, a Row object per point. Here, on PostgreSQL (a pool of
its own), a small batch is one statement and a large one a COPY; on SQLite a batch is one
trip to a writer thread; and a page comes back as plain tuples. Everything else in the
tracker goes through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import asyncpg
from sqlalchemy.engine import URL

POOL_SIZE = 8


class Batch(NamedTuple):
    """Metric points as columns, the way they travel from a request to the driver: nothing
    is built per point in between."""

    keys: Sequence[str]
    steps: Sequence[int]
    values: Sequence[float]
    timestamps: Sequence[int]  # ms since the epoch; 0 means "now" until stored


class Newest(NamedTuple):
    """The newest point of one key in a batch (it may move tracker_latest_metrics)."""

    key: str
    step: int
    value: float
    timestamp: int


class UnknownRun(Exception):
    """The run is gone (its latest-metrics row has nowhere to point)."""


def newest(batch: Batch) -> list[Newest]:
    """Per key, the point with the highest (step, timestamp); the later one on a tie."""
    keys, steps, values, stamps = batch
    if len(set(keys)) == 1:  # the usual batch: one series, searched in C
        top = max(steps)
        if steps.count(top) == 1:
            i = len(steps) - 1 - steps[::-1].index(top)
        else:
            _, _, i = max(zip(steps, stamps, range(len(steps)), strict=True))
        return [Newest(keys[i], steps[i], values[i], stamps[i])]
    best: dict[str, tuple[int, int, int]] = {}
    for i, (key, step, stamp) in enumerate(zip(keys, steps, stamps, strict=True)):
        old = best.get(key)
        if old is None or (step, stamp) >= old[:2]:
            best[key] = (step, stamp, i)
    return [Newest(k, s, values[i], t) for k, (s, t, i) in sorted(best.items())]


def page_sql(mark: str, from_step: bool) -> str:
    """One page of a series in (step, timestamp) order, from a step on, through the
    (run, key, step, timestamp) index: no sort. `mark` is the driver's parameter style."""
    n = itertools.count(1)

    def p() -> str:
        return "?" if mark == "?" else f"${next(n)}"

    sql = f"SELECT step, value, timestamp FROM tracker_metrics WHERE run_id = {p()} AND key = {p()}"
    if from_step:
        sql += f" AND step >= {p()}"
    return sql + f" ORDER BY step, timestamp LIMIT {p()} OFFSET {p()}"


class PointStore(ABC):
    """Appends batches and reads pages of one series."""

    @abstractmethod
    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        """Store the batch (its timestamps filled in) and move each key's latest point
        forward, atomically; UnknownRun when the run does not exist."""

    @abstractmethod
    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> list[tuple[int, float, int]]:
        """(step, value, timestamp) rows in order, from `from_step` on, skipping `skip`."""

    @abstractmethod
    async def close(self) -> None: ...


def for_url(url: URL) -> PointStore:
    if url.get_backend_name() == "postgresql":
        return PostgresPoints(url)
    return SqlitePoints(url)


# ---------------------------------------------------------------------------- PostgreSQL
COLUMNS = ("run_id", "key", "step", "value", "timestamp")
# From this many points a batch goes by COPY: asyncpg checks every element of an array
# parameter against collections.abc (about 1 ms of CPU per 1000 points over four arrays),
# while COPY encodes rows in C; below it, one statement saves COPY's extra round trips.
COPY_FROM = 32


def _latest_sql(first: int) -> str:
    """Move each key's latest point forward (from parameters $first..$first+3, the run $1).
    Its foreign key checks the run once per batch; tracker_metrics has none, which would
    check it once per point and double the cost of ingest."""
    key, step, value, stamp = (f"${first + i}" for i in range(4))
    return (
        "INSERT INTO tracker_latest_metrics AS latest (run_id, key, step, value, timestamp) "
        f"SELECT $1, * FROM unnest({key}::text[], {step}::bigint[], {value}::float8[], "
        f"{stamp}::bigint[]) ON CONFLICT (run_id, key) DO UPDATE "
        "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
        "WHERE excluded.step >= latest.step"
    )


PG_LATEST = _latest_sql(2)
# A small batch in one statement, atomic on its own: the points and the latest upsert.
PG_APPEND = (
    "WITH points AS (INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) "
    "SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::float8[], $5::bigint[])) "
    + _latest_sql(6)
)
PG_PAGE = {False: page_sql("$", False), True: page_sql("$", True)}
# Metric points are committed without waiting for the WAL flush (on the points connections
# only; runs, params and everything else stay synchronous). A crash of PostgreSQL or of its
# machine may lose the points of the last moments (at most 3 x wal_writer_delay, 600 ms by
# default); it never corrupts or half-applies a batch. The flush costs more than the rest
# of a one-point LogMetrics call. The embedded SQLite makes the same trade (synchronous=
# NORMAL: see service_kit.db).
SERVER_SETTINGS = {"synchronous_commit": "off"}


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: these connections never change session state, and the
    default reset costs a round trip per call."""


class PostgresPoints(PointStore):
    def __init__(self, url: URL) -> None:
        self.url = url
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def _connections(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    u = self.url
                    self._pool = await asyncpg.create_pool(
                        host=u.host,
                        port=u.port,
                        user=u.username,
                        password=u.password,
                        database=u.database,
                        min_size=1,
                        max_size=POOL_SIZE,
                        reset=_keep_session,
                        server_settings=SERVER_SETTINGS,
                    )
        return self._pool

    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        top = zip(*latest, strict=True)
        pool = await self._connections()
        try:
            async with pool.acquire() as conn:
                if len(batch.keys) < COPY_FROM:
                    await conn.execute(PG_APPEND, run_id, *batch, *top)
                    return
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "tracker_metrics",
                        records=zip(itertools.repeat(run_id), *batch),
                        columns=COLUMNS,
                    )
                    await conn.execute(PG_LATEST, run_id, *top)
        except asyncpg.ForeignKeyViolationError:
            raise UnknownRun(run_id) from None

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> list[tuple[int, float, int]]:
        pool = await self._connections()
        args: tuple[Any, ...] = (run_id, key) + (() if from_step is None else (from_step,))
        async with pool.acquire() as conn:
            return await conn.fetch(PG_PAGE[from_step is not None], *args, limit, skip)  # type: ignore[no-any-return]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# ---------------------------------------------------------------------------- SQLite
MAX_ROWS = 1000  # points per insert statement


@functools.lru_cache(maxsize=64)
def sqlite_append(n: int) -> str:
    """An insert of n points in one statement, the run bound once (?1) and four parameters a
    point after it: twice as fast as executemany, which steps the statement once a row."""
    rows = ",".join(f"(?1,?{i},?{i + 1},?{i + 2},?{i + 3})" for i in range(2, 2 + 4 * n, 4))
    return f"INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) VALUES {rows}"


SQLITE_LATEST = (
    "INSERT INTO tracker_latest_metrics (run_id, key, step, value, timestamp) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE "
    "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.step >= tracker_latest_metrics.step"
)
SQLITE_PAGE = {False: page_sql("?", False), True: page_sql("?", True)}


class SqlitePoints(PointStore):
    """A connection per thread: one writer thread (SQLite takes one writer at a time anyway,
    so concurrent batches queue here rather than spin on the file lock) and one reader, which
    WAL lets read while the writer writes. Each call is one trip to its thread."""

    def __init__(self, url: URL) -> None:
        if not url.database or url.database == ":memory:":
            raise ValueError("the tracker needs a SQLite file, not an in-memory database")
        self.path = url.database
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="tracker-sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tracker-sqlite-reader")
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # Autocommit mode: transactions are the explicit BEGIN IMMEDIATE below.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # as service_kit.db: see there
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _append(self, run_id: str, batch: Batch, latest: list[Any]) -> None:
        conn = self._conn()
        # key, step, value, timestamp of each point, in as few statements as the database's
        # limit on parameters allows
        flat = list(itertools.chain.from_iterable(zip(*batch, strict=True)))
        per = 4 * min(MAX_ROWS, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1) // 4)
        conn.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade from a read later
        try:
            for at in range(0, len(flat), per):
                part = flat[at : at + per]
                conn.execute(sqlite_append(len(part) // 4), [run_id, *part])
            conn.executemany(SQLITE_LATEST, latest)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        top = [(run_id, *n) for n in latest]
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._append, run_id, batch, top
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" not in str(exc):
                raise
            raise UnknownRun(run_id) from None

    def _page(self, sql: str, args: tuple[Any, ...]) -> list[tuple[int, float, int]]:
        return self._conn().execute(sql, args).fetchall()

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> list[tuple[int, float, int]]:
        args = (run_id, key) + (() if from_step is None else (from_step,)) + (limit, skip)
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._page, SQLITE_PAGE[from_step is not None], args
        )

    async def close(self) -> None:
        def shut() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()

        loop = asyncio.get_running_loop()
        for pool in (self._writer, self._reader):
            await loop.run_in_executor(pool, shut)
            pool.shutdown(wait=False)
