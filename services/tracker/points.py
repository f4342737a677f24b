"""Metric points straight on the database driver: the tracker's two hot paths.

Logging a batch and reading a page of a series are most of the tracker's traffic, and through
SQLAlchemy each cost more in Python than in the database. Here a batch is one statement (one
trip to a writer thread on SQLite) and a page comes back as numpy columns. Everything else in
the tracker goes through SQLAlchemy.

Points are stored in two forms. A key's points that arrive in bulk (BLOCK_FROM or more in
one batch) become one row of tracker_metric_blocks, its steps, values and timestamps packed
as little-endian arrays: one row to write instead of a thousand, each with its index entry,
which was most of the database's time per batch. A trickle (a point per epoch, say) stays a
row per point in tracker_metrics, where it costs nothing to append. A read merges the two by
(step, timestamp), loading only the blocks whose step range can reach the page.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import asyncpg
import numpy as np
from sqlalchemy.engine import URL

POOL_SIZE = 8
BLOCK_FROM = 32  # a key with this many points in one batch is stored as a block
LOWEST = -(2**63)  # "from the first step"
EVERYTHING = 2**62  # a limit that is no limit
STEP, VALUE, STAMP = np.dtype("<i8"), np.dtype("<f8"), np.dtype("<i8")


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


class Block(NamedTuple):
    """A key's points from one batch as one row: the arrays in arrival order, packed."""

    key: str
    first_step: int
    last_step: int
    point_count: int
    steps: bytes
    values: bytes
    timestamps: bytes


class Columns(NamedTuple):
    """Points of one series in (step, timestamp) order."""

    steps: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[Sequence[Any]]) -> Columns:
        """From (step, value, timestamp) rows."""
        if not rows:
            return NONE
        steps, values, stamps = zip(*rows, strict=True)
        return cls(np.array(steps, STEP), np.array(values, VALUE), np.array(stamps, STAMP))

    @classmethod
    def unpack(cls, steps: bytes, values: bytes, stamps: bytes) -> Columns:
        return cls(
            np.frombuffer(steps, STEP), np.frombuffer(values, VALUE), np.frombuffer(stamps, STAMP)
        )

    def __len__(self) -> int:
        return len(self.steps)

    def rows(self) -> list[tuple[int, float, int]]:
        columns = (self.steps.tolist(), self.values.tolist(), self.timestamps.tolist())
        return list(zip(*columns, strict=True))


NONE = Columns(np.empty(0, STEP), np.empty(0, VALUE), np.empty(0, STAMP))


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


def _block(key: str, steps: Sequence[int], values: Sequence[float], stamps: Sequence[int]) -> Block:
    s = np.array(steps, STEP)
    return Block(
        key,
        int(s.min()),
        int(s.max()),
        len(s),
        s.tobytes(),
        np.array(values, VALUE).tobytes(),
        np.array(stamps, STAMP).tobytes(),
    )


def split(batch: Batch) -> tuple[Batch, list[Block]]:
    """The batch's trickle (keys with few points, as rows) and its blocks."""
    keys = batch.keys
    if len(keys) < BLOCK_FROM:
        return batch, []
    if len(set(keys)) == 1:
        return Batch((), (), (), ()), [_block(keys[0], *batch[1:])]
    where: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        where.setdefault(key, []).append(i)
    rows: list[int] = []
    blocks = []
    for key, at in where.items():
        if len(at) < BLOCK_FROM:
            rows.extend(at)
        else:
            blocks.append(_block(key, *([column[i] for i in at] for column in batch[1:])))
    rows.sort()
    trickle = Batch(*([column[i] for i in rows] for column in batch))
    return trickle, blocks


class BlockSpan(NamedTuple):
    id: int
    first_step: int
    last_step: int
    point_count: int


def blocks_to_read(spans: Iterable[BlockSpan], rows: Columns, want: int, lo: int) -> list[int]:
    """The blocks that can hold any of the first `want` points from step `lo` on, given the
    trickle's first `want` such points. Spans come by first step; once `want` points are
    known to lie at or below step M, a block that starts after M cannot reach the page."""
    known = len(rows)
    top = int(rows.steps.max()) if known else LOWEST
    ids = []
    for span in spans:
        if known >= want and span.first_step > top:
            break
        ids.append(span.id)
        if span.first_step >= lo:  # all its points count
            known += span.point_count
            top = max(top, span.last_step)
    return ids


def merge(rows: Columns, blocks: Iterable[Columns], lo: int, skip: int, limit: int) -> Columns:
    """The points from step `lo` on, in (step, timestamp) order, skipping `skip`. The sort is
    stable and the parts come in a fixed order, so equal points keep their order between
    pages."""
    parts = [rows, *blocks]
    if len(parts) == 1:
        return Columns(*(c[skip : skip + limit] for c in rows))
    steps, values, stamps = (np.concatenate(c) for c in zip(*parts, strict=True))
    if lo != LOWEST:
        keep = steps >= lo
        steps, values, stamps = steps[keep], values[keep], stamps[keep]
    order = np.lexsort((stamps, steps))[skip : skip + limit]
    return Columns(steps[order], values[order], stamps[order])


def _sql(mark: str) -> dict[str, str]:
    """The read statements in the driver's parameter style: "?" or "$" (numbered)."""

    def marks(n: int) -> list[str]:
        return ["?"] * n if mark == "?" else [f"${i}" for i in range(1, n + 1)]

    run, key, step, limit = marks(4)
    rows = (
        f"SELECT step, value, timestamp FROM tracker_metrics WHERE run_id = {run} "
        f"AND key = {key} AND step >= {step} ORDER BY step, timestamp LIMIT {limit}"
    )
    spans = (
        "SELECT id, first_step, last_step, point_count FROM tracker_metric_blocks WHERE "
        f"run_id = {run} AND key = {key} AND last_step >= {step} ORDER BY first_step, id"
    )
    run, key, run2, key2 = marks(4)
    count = (
        f"SELECT (SELECT count(*) FROM tracker_metrics WHERE run_id = {run} AND key = {key})"
        " + (SELECT coalesce(sum(point_count), 0) FROM tracker_metric_blocks WHERE "
        f"run_id = {run2} AND key = {key2})"
    )
    return {"rows": rows, "spans": spans, "count": count}


class PointStore(ABC):
    """Appends batches and reads pages of one series."""

    @abstractmethod
    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        """Store the batch (its timestamps filled in) and move each key's latest point
        forward, atomically; UnknownRun when the run does not exist."""

    @abstractmethod
    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int | None
    ) -> Columns:
        """Points in order, from `from_step` on, skipping `skip`; all of them without a
        limit."""

    @abstractmethod
    async def count(self, run_id: str, key: str) -> int:
        """How many points the series has."""

    @abstractmethod
    async def close(self) -> None: ...


def for_url(url: URL) -> PointStore:
    if url.get_backend_name() == "postgresql":
        return PostgresPoints(url)
    return SqlitePoints(url)


# ---------------------------------------------------------------------------- PostgreSQL
# One statement per batch, atomic on its own: the blocks, the trickle, and the latest upsert.
# The upsert's foreign key checks the run once per batch; tracker_metrics and the blocks
# have none, which would check it for every point or block.
PG_APPEND = (
    "WITH blocks AS (INSERT INTO tracker_metric_blocks (run_id, key, first_step, last_step, "
    "point_count, steps, metric_values, timestamps) SELECT $1, * FROM unnest($2::text[], "
    "$3::bigint[], $4::bigint[], $5::int[], $6::bytea[], $7::bytea[], $8::bytea[])), "
    "points AS (INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) "
    "SELECT $1, * FROM unnest($9::text[], $10::bigint[], $11::float8[], $12::bigint[])) "
    "INSERT INTO tracker_latest_metrics AS latest (run_id, key, step, value, timestamp) "
    "SELECT $1, * FROM unnest($13::text[], $14::bigint[], $15::float8[], $16::bigint[]) "
    "ON CONFLICT (run_id, key) DO UPDATE "
    "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.step >= latest.step"
)
PG = _sql("$")
PG_BLOCKS = (
    "SELECT steps, metric_values, timestamps FROM tracker_metric_blocks WHERE id = ANY($1) "
    "ORDER BY first_step, id"
)
# Metric points are committed without waiting for the WAL flush (on the points connections
# only; runs, params and everything else stay synchronous). A crash of PostgreSQL or of its
# machine may lose the points of the last moments (at most 3 x wal_writer_delay, 600 ms by
# default); it never corrupts or half-applies a batch. The flush costs more than the rest
# of a one-point LogMetrics call. The embedded SQLite makes the same trade (synchronous=
# NORMAL: see service_kit.db).
SERVER_SETTINGS = {"synchronous_commit": "off"}


def _columns(items: Sequence[Sequence[Any]], width: int) -> list[Sequence[Any]]:
    return list(zip(*items, strict=True)) if items else [()] * width


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
        trickle, blocks = split(batch)
        args = (run_id, *_columns(blocks, 7), *trickle, *_columns(latest, 4))
        pool = await self._connections()
        try:
            async with pool.acquire() as conn:
                await conn.execute(PG_APPEND, *args)
        except asyncpg.ForeignKeyViolationError:
            raise UnknownRun(run_id) from None

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int | None
    ) -> Columns:
        lo = LOWEST if from_step is None else from_step
        want = EVERYTHING if limit is None else skip + limit
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = Columns.of(await conn.fetch(PG["rows"], run_id, key, lo, want))
            spans = [BlockSpan(*s) for s in await conn.fetch(PG["spans"], run_id, key, lo)]
            ids = blocks_to_read(spans, rows, want, lo)
            blocks = [Columns.unpack(*b) for b in await conn.fetch(PG_BLOCKS, ids)] if ids else []
        return merge(rows, blocks, lo, skip, want - skip)

    async def count(self, run_id: str, key: str) -> int:
        pool = await self._connections()
        async with pool.acquire() as conn:
            return int(await conn.fetchval(PG["count"], run_id, key, run_id, key))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


# ---------------------------------------------------------------------------- SQLite
MAX_ROWS = 1000  # trickle points per insert statement
SQLITE_BLOCK = (
    "INSERT INTO tracker_metric_blocks (run_id, key, first_step, last_step, point_count, "
    "steps, metric_values, timestamps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
SQLITE_LATEST = (
    "INSERT INTO tracker_latest_metrics (run_id, key, step, value, timestamp) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE "
    "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.step >= tracker_latest_metrics.step"
)
SQLITE = _sql("?")


def sqlite_append(n: int) -> str:
    """An insert of n points in one statement, the run bound once (?1) and four parameters a
    point after it: twice as fast as executemany, which steps the statement once a row."""
    rows = ",".join(f"(?1,?{i},?{i + 1},?{i + 2},?{i + 3})" for i in range(2, 2 + 4 * n, 4))
    return f"INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) VALUES {rows}"


def sqlite_blocks(n: int) -> str:
    return (
        "SELECT steps, metric_values, timestamps FROM tracker_metric_blocks WHERE id IN "
        f"({','.join('?' * n)}) ORDER BY first_step, id"
    )


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

    def _append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        conn = self._conn()
        trickle, blocks = split(batch)
        # key, step, value, timestamp of each point, in as few statements as the database's
        # limit on parameters allows
        flat = list(itertools.chain.from_iterable(zip(*trickle, strict=True)))
        per = 4 * min(MAX_ROWS, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1) // 4)
        conn.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade from a read later
        try:
            conn.executemany(SQLITE_BLOCK, [(run_id, *b) for b in blocks])
            for at in range(0, len(flat), per):
                part = flat[at : at + per]
                conn.execute(sqlite_append(len(part) // 4), [run_id, *part])
            conn.executemany(SQLITE_LATEST, [(run_id, *n) for n in latest])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, self._append, run_id, batch, latest
            )
        except sqlite3.IntegrityError as exc:
            if "FOREIGN KEY" not in str(exc):
                raise
            raise UnknownRun(run_id) from None

    def _page(self, run_id: str, key: str, lo: int, skip: int, want: int) -> Columns:
        conn = self._conn()
        rows = Columns.of(conn.execute(SQLITE["rows"], (run_id, key, lo, want)).fetchall())
        spans = [BlockSpan(*s) for s in conn.execute(SQLITE["spans"], (run_id, key, lo))]
        ids = blocks_to_read(spans, rows, want, lo)
        per = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        blocks = [
            Columns.unpack(*b)
            for at in range(0, len(ids), per)
            for b in conn.execute(sqlite_blocks(len(ids[at : at + per])), ids[at : at + per])
        ]
        return merge(rows, blocks, lo, skip, want - skip)

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int | None
    ) -> Columns:
        lo = LOWEST if from_step is None else from_step
        want = EVERYTHING if limit is None else skip + limit
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._page, run_id, key, lo, skip, want
        )

    def _count(self, run_id: str, key: str) -> int:
        return int(self._conn().execute(SQLITE["count"], (run_id, key, run_id, key)).fetchone()[0])

    async def count(self, run_id: str, key: str) -> int:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._count, run_id, key
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
