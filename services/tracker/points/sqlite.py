"""SQLite's point store: a writer thread and a reader thread, each with its own connection; a
batch is one trip to the writer, in as few insert statements as SQLite's parameter limit allows."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.engine import URL

from .backend import PointStore, Reads, UnknownRun
from .batches import Batch, Newest, split
from .columns import Columns
from .downsample import Span, Summaries
from .pages import LOWEST, BlockSpan, blocks_to_read, merge, read_statements, summaries_of, tops_of
from .summaries import COLUMNS as SUMMARY_COLUMNS
from .summaries import LEVELS, UPSERT_SET, summarize

MAX_ROWS = 1000  # trickle points per insert statement
BLOCK = (
    "INSERT INTO tracker_metric_blocks (run_id, key, first_step, last_step, point_count, "
    "steps, metric_values, timestamps) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
LATEST = (
    "INSERT INTO tracker_latest_metrics (run_id, key, step, value, timestamp) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE "
    "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.step >= tracker_latest_metrics.step"
)
SUMMARIES = (
    f"INSERT INTO tracker_metric_summaries (run_id, {', '.join(SUMMARY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (1 + len(SUMMARY_COLUMNS)))}) {UPSERT_SET}"
)
READ = read_statements("?")


def insert_rows(n: int) -> str:
    """An insert of n points in one statement, the run bound once (?1) and four parameters a
    point after it: twice as fast as executemany, which steps the statement once a row."""
    rows = ",".join(f"(?1,?{i},?{i + 1},?{i + 2},?{i + 3})" for i in range(2, 2 + 4 * n, 4))
    return f"INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) VALUES {rows}"


def select_blocks(n: int) -> str:
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
        self.reads = Reads()

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
        summaries = [(run_id, *row) for row in zip(*summarize(batch), strict=True)]
        # key, step, value, timestamp of each point, in as few statements as the database's
        # limit on parameters allows
        flat = list(itertools.chain.from_iterable(zip(*trickle, strict=True)))
        per = 4 * min(MAX_ROWS, (conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1) // 4)
        conn.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade from a read later
        try:
            conn.executemany(BLOCK, [(run_id, *b) for b in blocks])
            for at in range(0, len(flat), per):
                part = flat[at : at + per]
                conn.execute(insert_rows(len(part) // 4), [run_id, *part])
            conn.executemany(SUMMARIES, summaries)
            conn.executemany(LATEST, [(run_id, *n) for n in latest])
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

    def _page(self, run_id: str, key: str, lo: int, skip: int, limit: int) -> Columns:
        conn = self._conn()
        want = skip + limit
        rows = Columns.of(conn.execute(READ["rows"], (run_id, key, lo, want)).fetchall())
        spans = [BlockSpan(*s) for s in conn.execute(READ["spans"], (run_id, key, lo))]
        ids = blocks_to_read(spans, rows, want, lo)
        per = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        blocks = [
            Columns.unpack(*b)
            for at in range(0, len(ids), per)
            for b in conn.execute(select_blocks(len(ids[at : at + per])), ids[at : at + per])
        ]
        self.reads.points += len(rows) + sum(len(b) for b in blocks)
        self.reads.block_spans += len(spans)
        return merge(rows, blocks, lo, skip, limit)

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> Columns:
        lo = LOWEST if from_step is None else from_step
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._page, run_id, key, lo, skip, limit
        )

    def _span(self, run_id: str, key: str) -> Span:
        rows, *span = self._conn().execute(READ["span"], (run_id, key, LEVELS[-1])).fetchone()
        self.reads.summaries += rows
        return Span(*span)

    async def span(self, run_id: str, key: str) -> Span:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._span, run_id, key
        )

    def _summaries(self, run_id: str, key: str, level: int, lo: int, hi: int) -> Summaries:
        rows = self._conn().execute(READ["summaries"], (run_id, key, level, lo, hi)).fetchall()
        self.reads.summaries += len(rows)
        return summaries_of(rows)

    async def summaries(self, run_id: str, key: str, level: int, lo: int, hi: int) -> Summaries:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._summaries, run_id, key, level, lo, hi
        )

    def _tops(
        self, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, Summaries]]:
        args = [LEVELS[-1], json.dumps(list(run_ids))] + ([json.dumps(list(keys))] if keys else [])
        rows = self._conn().execute(READ["tops_of_keys" if keys else "tops"], args).fetchall()
        self.reads.summaries += len(rows)
        return tops_of(rows)

    async def tops(
        self, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, Summaries]]:
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self._tops, run_ids, keys
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
