"""Metric points as blocks and rows: how a batch is split, which blocks a page reads, and the
merge, here against a plain sorted list; then on real PostgreSQL and SQLite, pages over a mix
of blocks and rows written by concurrent writers, downsampling, purge and the migration's
downgrade."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest
from service_kit import db

from services.tracker.points.batches import BLOCK_FROM, Batch, split
from services.tracker.points.columns import NONE, Columns
from services.tracker.points.pages import LOWEST, BlockSpan, blocks_to_read, merge
from services.tracker.store import TrackerStore
from services.tracker.store.metrics import Point

from .tracker_points_helper import log_points

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "tracker" / "migrations"


def cols(steps: list[int], stamps: list[int] | None = None) -> Columns:
    stamps = stamps or [0] * len(steps)
    return Columns.of([(s, float(s), t) for s, t in zip(steps, stamps, strict=True)])


def test_a_bulk_key_becomes_a_block_and_a_trickle_stays_rows() -> None:
    few = Batch(("loss",) * 3, (1, 2, 3), (0.1, 0.2, 0.3), (9, 9, 9))
    assert split(few) == (few, [])
    n = BLOCK_FROM
    one = Batch(("loss",) * n, tuple(range(n, 0, -1)), (0.5,) * n, (7,) * n)
    trickle, blocks = split(one)
    assert trickle.keys == () and len(blocks) == 1
    block = blocks[0]
    assert (block.key, block.first_step, block.last_step, block.point_count) == ("loss", 1, n, n)
    unpacked = Columns.unpack(block.steps, block.values, block.timestamps)
    assert unpacked.steps.tolist() == list(range(n, 0, -1))  # arrival order: sorted on read
    mixed = Batch(
        ("acc", "lr", *("loss",) * n),
        (5, 6, *range(n)),
        (0.9, 0.01, *(1.0,) * n),
        (1, 2, *(3,) * n),
    )
    trickle, blocks = split(mixed)
    assert list(trickle.keys) == ["acc", "lr"] and list(trickle.steps) == [5, 6]
    assert [b.key for b in blocks] == ["loss"]


def test_a_page_reads_only_the_blocks_that_can_reach_it() -> None:
    spans = [BlockSpan(i, i * 100, i * 100 + 99, 100) for i in range(10)]
    # 150 points from the start: blocks 0 and 1 hold them, block 2 starts past step 199
    assert blocks_to_read(spans, NONE, 150, LOWEST) == [0, 1]
    # from step 250 block 2 straddles (read, but not counted on); block 3 alone is enough
    assert blocks_to_read(spans[2:], NONE, 100, 250) == [2, 3]
    assert blocks_to_read(spans[2:], NONE, 101, 250) == [2, 3, 4]
    # rows already give the page up to step 120: only blocks starting at or before it
    assert blocks_to_read(spans, cols(list(range(0, 121, 10))), 13, LOWEST) == [0, 1]
    # overlapping blocks (concurrent writers) all reach the page
    overlapping = [BlockSpan(i, 0, 1000, 100) for i in range(4)]
    assert blocks_to_read(overlapping, NONE, 10, LOWEST) == [0, 1, 2, 3]
    # a block starting at the page's last step may hold earlier timestamps there
    touching = [BlockSpan(0, 0, 9, 10), BlockSpan(1, 9, 9, 10), BlockSpan(2, 10, 20, 10)]
    assert blocks_to_read(touching, NONE, 10, LOWEST) == [0, 1]


def test_merge_orders_by_step_then_timestamp_and_pages_like_a_sorted_list() -> None:
    rng = random.Random(7)
    parts = [
        cols([rng.randrange(50) for _ in range(40)], [rng.randrange(3) for _ in range(40)])
        for _ in range(4)
    ]
    everything = sorted(
        (
            (s, t)
            for p in parts
            for s, t in zip(p.steps.tolist(), p.timestamps.tolist(), strict=True)
        )
    )
    for lo, skip, limit in [(LOWEST, 0, 500), (LOWEST, 10, 25), (20, 3, 40), (49, 0, 5)]:
        got = merge(parts[0], parts[1:], lo, skip, limit)
        want = [p for p in everything if p[0] >= lo][skip : skip + limit]
        assert list(zip(got.steps.tolist(), got.timestamps.tolist(), strict=True)) == want


async def store_for(url: str) -> TrackerStore:
    engine = db.make_engine(url)
    await db.migrate(engine, MIGRATIONS, "alembic_version_tracker")
    return TrackerStore(engine)


async def read_all(s: TrackerStore, run_id: str, key: str, size: int) -> list[tuple[int, int]]:
    got: list[tuple[int, int]] = []
    token = ""
    while True:
        page = await s.history.page(run_id, "alice", key, 0, size, token)
        got += zip(page.steps.tolist(), page.timestamps.tolist(), strict=True)
        token = page.next_page_token
        if not token:
            return got


async def test_pages_over_blocks_and_rows_from_concurrent_writers(db_url: str) -> None:
    """Eight writers, bulk and trickle batches, interleaved and repeated steps: every page
    size reads back exactly the sorted points, none lost or doubled."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    rng = random.Random(1)
    sent: list[tuple[int, int]] = []

    async def writer(w: int) -> None:
        for _ in range(6):
            n = rng.choice([1, 5, BLOCK_FROM, 300])
            batch = [Point("loss", w + 0.5, rng.randrange(2000), 1000 + w) for _ in range(n)]
            sent.extend((p.step, p.timestamp) for p in batch)
            await log_points(s, run.id, "alice", batch)

    await asyncio.gather(*(writer(w) for w in range(8)))
    for size in (1, 7, 250, 10_000):
        if size == 1 and len(sent) > 600:
            continue  # one point a page: too many calls to be worth it
        assert await read_all(s, run.id, "loss", size) == sorted(sent)
    assert await s.points.count(run.id, "loss") == len(sent)
    sampled = await s.history.page(run.id, "alice", "loss", 50, 1000, "")
    assert sampled.downsampled and len(sampled.steps) <= 4 * (50 // 4)
    assert sampled.steps[0] == min(sent)[0] and sampled.steps[-1] == max(sent)[0]
    assert list(sampled.steps) == sorted(sampled.steps)
    await s.close()


async def test_steps_repeated_across_a_page_boundary_are_sent_once(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    # 3 blocks all at step 5 (different timestamps), then a trickle at step 5 and 6
    for t in range(3):
        await log_points(s, run.id, "alice", [Point("x", 1.0, 5, 100 + t)] * 40)
    await log_points(s, run.id, "alice", [Point("x", 1.0, 5, 50), Point("x", 1.0, 6, 1)])
    got = await read_all(s, run.id, "x", 33)
    assert got == [(5, 50)] + [(5, 100 + t) for t in range(3) for _ in range(40)] + [(6, 1)]
    await s.close()


async def test_purge_removes_blocks_and_a_gone_run_gets_none(db_url: str) -> None:
    from service_kit.errors import NotFound
    from sqlalchemy import func, select

    from services.tracker.tables import metric_blocks, metrics

    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await log_points(s, run.id, "alice", [Point("loss", 0.5, i) for i in range(100)])
    await log_points(s, run.id, "alice", [Point("loss", 0.5, 100)])
    s.runs.owner_of["gone"] = "alice"
    with pytest.raises(NotFound):
        await log_points(s, "gone", "alice", [Point("loss", 0.5, i) for i in range(100)])
    await s.experiments.set_deleted(exp.id, "alice", True)
    await s.experiments.purge(exp.id, "alice")
    async with s.engine.connect() as conn:
        for table in (metrics, metric_blocks):
            assert (await conn.execute(select(func.count()).select_from(table))).scalar() == 0
    await s.close()


async def test_downgrade_unpacks_blocks_into_rows(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import text

    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await log_points(s, run.id, "alice", [Point("loss", i / 8, i, 7) for i in range(64)])
    await log_points(s, run.id, "alice", [Point("loss", 9.0, 64, 7)])
    await s.points.close()

    def down(sync_conn: object) -> None:
        cfg = db._config(MIGRATIONS, "alembic_version_tracker")
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "tracker_0002")

    async with s.engine.begin() as conn:
        await conn.run_sync(down)
    async with s.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT step, value, timestamp FROM tracker_metrics ORDER BY step")
            )
        ).all()
    assert [tuple(r) for r in rows] == [(i, i / 8, 7) for i in range(64)] + [(64, 9.0, 7)]
    await s.engine.dispose()
    again = await store_for(db_url)  # and up again
    page = await again.history.page(run.id, "alice", "loss", 0, 1000, "")
    assert page.steps.tolist() == list(range(65)) and np.isclose(page.values[8], 1.0)
    await again.close()


async def test_downsampled_pages_are_offsets_into_one_sample(db_url: str) -> None:
    """Paged 6 points at a time, a downsampled series is the one-page answer cut in pieces
    (steps repeat across the pages' boundaries here)."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    rng = random.Random(3)
    sent = [(rng.randrange(60), t) for t in range(203)]  # 203 points, many per step
    for at in range(0, len(sent), 50):
        part = sent[at : at + 50]
        await log_points(
            s, run.id, "alice", [Point("x", float(t % 7), st, t + 1) for st, t in part]
        )
    whole = await s.history.page(run.id, "alice", "x", 20, 1000, "")
    assert whole.downsampled and not whole.next_page_token and 5 < len(whole.steps) <= 20
    got: list[tuple[int, int]] = []
    token = ""
    while True:
        page = await s.history.page(run.id, "alice", "x", 20, 6, token)
        assert page.downsampled
        got += zip(page.steps.tolist(), page.timestamps.tolist(), strict=True)
        token = page.next_page_token
        if not token:
            break
    assert got == list(zip(whole.steps.tolist(), whole.timestamps.tolist(), strict=True))
    await s.close()
