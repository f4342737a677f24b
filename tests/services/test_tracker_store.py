"""The tracker's storage on real PostgreSQL and SQLite: experiments, runs, write-once params,
metric batches and history, concurrent writers, and run search."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from service_kit import db
from service_kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from services.tracker.store import TrackerStore
from services.tracker.store.metrics import Point

from .tracker_points_helper import log_points

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "tracker" / "migrations"


async def store_for(url: str) -> TrackerStore:
    engine = db.make_engine(url)
    await db.migrate(engine, MIGRATIONS, "alembic_version_tracker")
    await db.migrate(engine, MIGRATIONS, "alembic_version_tracker")  # idempotent
    return TrackerStore(engine)


async def test_experiments_belong_to_their_owner(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "mnist")
    with pytest.raises(AlreadyExists):
        await s.experiments.create("alice", "mnist")
    await s.experiments.create("bob", "mnist")  # names are unique per owner
    with pytest.raises(NotFound):
        await s.experiments.get(exp.id, "bob")
    assert (await s.experiments.get(exp.id, None)).owner == "alice"  # admin
    renamed = await s.experiments.rename(exp.id, "alice", "mnist-v2")
    assert renamed.name == "mnist-v2"
    run = await s.runs.create(exp.id, "alice", "first")
    with pytest.raises(FailedPrecondition):
        await s.experiments.purge(exp.id, "alice")
    await s.experiments.set_deleted(exp.id, "alice", True)
    listed, _ = await s.experiments.page("alice", 10, "", "", False)
    assert listed == []
    listed, _ = await s.experiments.page("alice", 10, "", "mnist", True)
    assert [e.id for e in listed] == [exp.id]
    await s.experiments.set_deleted(exp.id, "alice", False)
    await s.experiments.set_deleted(exp.id, "alice", True)
    assert await s.experiments.purge(exp.id, "alice") == [run.id]
    with pytest.raises(NotFound):
        await s.runs.get(run.id, "alice")
    await s.close()


async def test_params_are_write_once_and_tags_change(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await s.params.log(run.id, "alice", {"lr": "0.01", "optimizer": "Adam"})
    await s.params.log(run.id, "alice", {"lr": "0.01"})  # the same value again is fine
    with pytest.raises(InvalidArgument, match=r"already '0\.01'"):
        await s.params.log(run.id, "alice", {"lr": "0.1"})
    await s.tags.set(run.id, "alice", {"team": "vision", "stage": "dev"})
    await s.tags.set(run.id, "alice", {"stage": "prod"}, remove=["team"])
    details = (await s.runs.details([run.id]))[run.id]
    assert details["params"] == {"lr": "0.01", "optimizer": "Adam"}
    assert details["tags"] == {"stage": "prod"}
    with pytest.raises(NotFound):
        await s.params.log(run.id, "bob", {"x": "1"})
    await s.close()


async def test_metric_batches_latest_and_history(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await log_points(s, run.id, "alice", [Point("loss", 1.0 / (i + 1), i) for i in range(1000)])
    await log_points(s, run.id, "alice", [Point("loss", 5.0, 3)])  # an old step: not latest
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="only finite values"):
            await log_points(s, run.id, "alice", [Point("loss", bad, 1001)])
    with pytest.raises(InvalidArgument, match="at most 1000"):
        await log_points(s, run.id, "alice", [Point("x", 1.0, i) for i in range(1001)])
    latest = (await s.runs.details([run.id]))[run.id]["latest"]
    assert [(p.key, p.step, p.value) for p in latest] == [("loss", 999, 1 / 1000)]
    page = await s.history.page(run.id, "alice", "loss", 0, 600, "")
    assert len(page.steps) == 600 and page.next_page_token and not page.downsampled
    rest = await s.history.page(run.id, "alice", "loss", 0, 600, page.next_page_token)
    assert len(rest.steps) == 401 and not rest.next_page_token
    steps = [*page.steps, *rest.steps]
    assert steps == sorted(steps)
    small = await s.history.page(run.id, "alice", "loss", 100, 1000, "")
    # M4 over 16 buckets of 64 steps (25 fit 100 points): a falling curve keeps each bucket's
    # first point (its highest) and last (its lowest), and the first bucket its highest, 5.0
    assert small.downsampled and len(small.steps) == 33 and small.values[1] == 5.0
    assert small.steps[0] == 0 and small.steps[-1] == 999
    await s.close()


def test_the_newest_point_of_a_batch_is_by_step_then_timestamp_then_the_later() -> None:
    from services.tracker.points.batches import Batch, Newest, newest

    one = Batch(("loss",) * 4, (3, 7, 7, 2), (0.1, 0.2, 0.3, 0.4), (5, 9, 8, 9))
    assert newest(one) == [Newest("loss", 7, 0.2, 9)]
    tie = Batch(("loss",) * 3, (7, 7, 1), (0.1, 0.2, 0.3), (5, 5, 5))
    assert newest(tie) == [Newest("loss", 7, 0.2, 5)]
    unique = Batch(("loss",) * 3, (1, 9, 4), (0.1, 0.2, 0.3), (5, 1, 9))
    assert newest(unique) == [Newest("loss", 9, 0.2, 1)]
    mixed = Batch(("b", "a", "b", "a"), (2, 1, 2, 0), (0.1, 0.2, 0.3, 0.4), (1, 1, 1, 9))
    assert newest(mixed) == [Newest("a", 1, 0.2, 1), Newest("b", 2, 0.3, 1)]


async def test_points_for_a_run_that_is_gone_are_refused_whole(db_url: str) -> None:
    """Points have no foreign key: a batch stands or falls with its latest-metrics row, whose
    foreign key still checks the run (here past a stale owner cache)."""
    from sqlalchemy import func, select

    from services.tracker.tables import metric_blocks, metrics

    s = await store_for(db_url)
    s.runs.owner_of["gone"] = "alice"  # as a replica that has not seen the purge would have it
    for n in (1, 500):  # a row, and a block
        with pytest.raises(NotFound):
            await log_points(s, "gone", "alice", [Point("loss", 0.5, i) for i in range(n)])
    assert "gone" not in s.runs.owner_of
    async with s.engine.connect() as conn:
        for table in (metrics, metric_blocks):
            assert (await conn.execute(select(func.count()).select_from(table))).scalar() == 0
    await s.close()


async def test_history_of_a_run_purged_past_a_stale_owner_cache_is_not_found(db_url: str) -> None:
    """Another tracker process purged the run: this one's cached owner says it exists, the
    empty read asks the database, and the caller hears NOT_FOUND, not an empty series."""
    s = await store_for(db_url)
    s.runs.owner_of["gone"] = "alice"
    for max_points in (0, 500):
        with pytest.raises(NotFound):
            await s.history.page("gone", "alice", "loss", max_points, 100, "")
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")  # a run with no points: an empty series
    assert len((await s.history.page(run.id, "alice", "loss", 0, 100, "")).steps) == 0
    await s.close()


async def test_a_batch_over_several_insert_statements_is_stored_whole(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.tracker.points import sqlite

    monkeypatch.setattr(sqlite, "MAX_ROWS", 7)  # SQLite splits a batch's rows at this many
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    # ten keys of five points: too few each for a block, so fifty rows
    batch = [Point(f"k{i % 10}", i / 10, i, 1000 + i) for i in range(50)]
    await log_points(s, run.id, "alice", batch)
    for k in range(10):
        got = await s.history.page(run.id, "alice", f"k{k}", 0, 100, "")
        assert list(got.steps) == list(range(k, 50, 10))
        assert list(got.timestamps) == [1000 + i for i in range(k, 50, 10)]
        assert got.values[-1] == (40 + k) / 10
    await s.close()


async def test_eight_concurrent_writers_lose_nothing(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")

    async def writer(w: int) -> None:
        for batch in range(5):
            points = [Point("acc", float(w), w * 10_000 + batch * 100 + i) for i in range(100)]
            await log_points(s, run.id, "alice", points)

    await asyncio.gather(*(writer(w) for w in range(8)))
    got = await s.history.page(run.id, "alice", "acc", 0, 10_000, "")
    assert not got.next_page_token and len(got.steps) == 8 * 5 * 100
    steps = list(got.steps)
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    latest = (await s.runs.details([run.id]))[run.id]["latest"][0]
    assert latest.step == 7 * 10_000 + 4 * 100 + 99
    await s.close()


async def test_search_runs_with_filters_order_and_pages(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    other = await s.experiments.create("bob", "e")
    made = {}
    for name, acc, opt, team, status in [
        ("base", 0.80, "SGD", "vision", "FINISHED"),
        ("wide", 0.93, "Adam", "vision", "FINISHED"),
        ("deep", 0.95, "Adam", "nlp", "FAILED"),
        ("tiny", 0.50, "Adam", "nlp", "RUNNING"),
    ]:
        run = await s.runs.create(exp.id, "alice", name)
        await s.params.log(run.id, "alice", {"optimizer": opt})
        await s.tags.set(run.id, "alice", {"team": team})
        await log_points(s, run.id, "alice", [Point("accuracy", acc, 1)])
        if status != "RUNNING":
            await s.runs.update(run.id, "alice", status=status)
        made[name] = run.id
    bob_run = await s.runs.create(other.id, "bob", "bobs")
    await log_points(s, bob_run.id, "bob", [Point("accuracy", 0.99, 1)])

    async def names(text: str, order: tuple[str, ...] = ("run_name",)) -> list[str]:
        rows, _ = await s.search.runs("alice", [], text, list(order), 50, "")
        return [r.name for r in rows]

    assert await names('metrics.accuracy > 0.9 and params.optimizer = "Adam"') == ["deep", "wide"]
    assert await names("metrics.accuracy > 0.9 and attributes.status = 'FAILED'") == ["deep"]
    assert await names(
        "(tags.team = 'vision' or metrics.accuracy < 0.6) and status != 'FAILED'"
    ) == ["base", "tiny", "wide"]
    assert await names("run_name LIKE 'w%' or run_name ILIKE 'DE%'") == ["deep", "wide"]
    assert await names("params.optimizer != 'Adam'") == ["base"]
    assert await names("", ("metrics.accuracy DESC",)) == ["deep", "wide", "base", "tiny"]
    assert "bobs" not in await names("")
    everyone, _ = await s.search.runs(None, [], "metrics.accuracy > 0.98", [], 50, "")
    assert [r.name for r in everyone] == ["bobs"]
    first, token = await s.search.runs("alice", [exp.id], "", ["run_name"], 3, "")
    second, end = await s.search.runs("alice", [exp.id], "", ["run_name"], 3, token)
    assert [r.name for r in first + second] == ["base", "deep", "tiny", "wide"] and not end
    with pytest.raises(InvalidArgument) as info:
        await s.search.runs("alice", [], "metrics.accuracy >> 1", [], 50, "")
    assert info.value.violations[0].field == "filter"
    assert "column 19" in info.value.violations[0].description
    await s.close()


async def test_migration_matches_the_table_definitions(db_url: str) -> None:
    """The hand-written revision creates what tables.py declares (no drift)."""
    from sqlalchemy import inspect

    from services.tracker.tables import metadata

    s = await store_for(db_url)
    async with s.engine.connect() as conn:
        found = await conn.run_sync(
            lambda c: {
                t: sorted(col["name"] for col in inspect(c).get_columns(t))
                for t in inspect(c).get_table_names()
                if t.startswith("tracker_")
            }
        )
    assert found == {t.name: sorted(c.name for c in t.columns) for t in metadata.sorted_tables}
    await s.close()
