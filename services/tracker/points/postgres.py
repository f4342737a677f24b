"""PostgreSQL's point store: a batch is one statement through asyncpg, a page three queries on
one pooled connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from .backend import PointStore, Reads, UnknownRun
from .batches import Batch, Newest, split
from .columns import Columns
from .downsample import Span, Summaries
from .pages import LOWEST, BlockSpan, blocks_to_read, merge, read_statements, summaries_of, tops_of
from .summaries import COLUMNS as SUMMARY_COLUMNS
from .summaries import LEVELS, UPSERT_SET, summarize

POOL_SIZE = 8
# One statement per batch, atomic on its own: the blocks, the trickle, the summaries and the
# latest upsert. The upsert's foreign key checks the run once per batch; tracker_metrics, the
# blocks and the summaries have none, which would check it for every point or row.
_TYPES = ("text", "smallint", "bigint", "bigint", *("bigint", "float8", "bigint") * 4)
_UNNEST = ", ".join(f"${17 + i}::{t}[]" for i, t in enumerate(_TYPES))
APPEND = (
    "WITH blocks AS (INSERT INTO tracker_metric_blocks (run_id, key, first_step, last_step, "
    "point_count, steps, metric_values, timestamps) SELECT $1, * FROM unnest($2::text[], "
    "$3::bigint[], $4::bigint[], $5::int[], $6::bytea[], $7::bytea[], $8::bytea[])), "
    "points AS (INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) "
    "SELECT $1, * FROM unnest($9::text[], $10::bigint[], $11::float8[], $12::bigint[])), "
    f"summaries AS (INSERT INTO tracker_metric_summaries (run_id, {', '.join(SUMMARY_COLUMNS)}) "
    f"SELECT $1, * FROM unnest({_UNNEST}) {UPSERT_SET}) "
    "INSERT INTO tracker_latest_metrics AS latest (run_id, key, step, value, timestamp) "
    "SELECT $1, * FROM unnest($13::text[], $14::bigint[], $15::float8[], $16::bigint[]) "
    "ON CONFLICT (run_id, key) DO UPDATE "
    "SET step = excluded.step, value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.step >= latest.step"
)
READ = read_statements("$")
BLOCKS = (
    "SELECT steps, metric_values, timestamps FROM tracker_metric_blocks WHERE id = ANY($1) "
    "ORDER BY first_step, id"
)
# Metric points are committed without waiting for the WAL flush (on the points connections
# only; runs, params and everything else stay synchronous). A crash of PostgreSQL or of its
# machine may lose the points of the last moments (at most 3 x wal_writer_delay, 600 ms by
# default); it never corrupts or half-applies a batch. The flush costs more than the rest
# of a one-point LogMetrics call. The embedded SQLite makes the same trade (synchronous=
# NORMAL: see service_kit.db).
SERVER_SETTINGS = {
    "synchronous_commit": "off",
    "application_name": "neural-tracker-points",  # told apart in pg_stat_activity
}


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
        self.reads = Reads()

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
        args = (run_id, *_columns(blocks, 7), *trickle, *_columns(latest, 4), *summarize(batch))
        pool = await self._connections()
        try:
            async with pool.acquire() as conn:
                await conn.execute(APPEND, *args)
        except asyncpg.ForeignKeyViolationError:
            raise UnknownRun(run_id) from None

    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> Columns:
        lo = LOWEST if from_step is None else from_step
        want = skip + limit
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = Columns.of(await conn.fetch(READ["rows"], run_id, key, lo, want))
            spans = [BlockSpan(*s) for s in await conn.fetch(READ["spans"], run_id, key, lo)]
            ids = blocks_to_read(spans, rows, want, lo)
            blocks = [Columns.unpack(*b) for b in await conn.fetch(BLOCKS, ids)] if ids else []
        self.reads.points += len(rows) + sum(len(b) for b in blocks)
        self.reads.block_spans += len(spans)
        return merge(rows, blocks, lo, skip, limit)

    async def span(self, run_id: str, key: str) -> Span:
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows, *span = await conn.fetchrow(READ["span"], run_id, key, LEVELS[-1])
        self.reads.summaries += rows
        return Span(*(int(x) for x in span))  # sum() of bigints is a numeric: a Decimal here

    async def summaries(self, run_id: str, key: str, level: int, lo: int, hi: int) -> Summaries:
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = await conn.fetch(READ["summaries"], run_id, key, level, lo, hi)
        self.reads.summaries += len(rows)
        return summaries_of(rows)

    async def tops(
        self, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, Summaries]]:
        args = [LEVELS[-1], list(run_ids)] + ([list(keys)] if keys else [])
        pool = await self._connections()
        async with pool.acquire() as conn:
            rows = await conn.fetch(READ["tops_of_keys" if keys else "tops"], *args)
        self.reads.summaries += len(rows)
        return tops_of(rows)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
