"""Downsampled metric history (M4 from per-series summaries): the answer equals a plain M4 over
the whole series read back page by page, on PostgreSQL and SQLite, for random series (repeated,
negative and huge steps, out-of-order arrival, retried batches, trickle and block batches,
several keys) and for concurrent writers; a read loads rows in proportion to max_points, not
to the series; the migration's backfill gives the same answers; purge removes the summaries;
non-finite values never reach them."""

from __future__ import annotations

import asyncio
import math
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neural.v1 import tracker_pb2
from service_kit import db
from service_kit.auth import Principal
from service_kit.errors import InvalidArgument
from service_kit.interceptors import current_principal
from sqlalchemy import func, select, text

from services.tracker import compare, plots
from services.tracker.artifacts import LocalArtifactStore
from services.tracker.points import downsample
from services.tracker.points.batches import Batch, pack
from services.tracker.points.downsample import Span, plan
from services.tracker.points.summaries import _large, _small, summarize
from services.tracker.service import TrackerService
from services.tracker.store import TrackerStore
from services.tracker.tables import metric_summaries
from tests.services.conftest import redis_url

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "tracker" / "migrations"
VERSIONS = "alembic_version_tracker"
Point3 = tuple[int, float, int]  # step, value, timestamp


def reference_m4(points: Sequence[Point3], max_points: int) -> list[Point3]:
    """M4 as the docs state it, over every point: B = max(1, N // 4) buckets of 2**k steps, k
    the smallest that fits the steps (one bucket for all at k = 64); buckets narrower than
    256 steps only while there are at most 128 * B points, else 256 wide; per bucket the
    first and last by (step, timestamp), the lowest and highest value (ties: the smallest
    (step, timestamp)); each point once, in order."""
    b = max(1, max_points // 4)
    first, last = min(p[0] for p in points), max(p[0] for p in points)
    k = 0
    while k < 64 and (last >> k) - (first >> k) + 1 > b:
        k += 1
    if k < 8 and len(points) > 128 * b:
        k = 8
    buckets: dict[int, list[Point3]] = defaultdict(list)
    for p in points:
        buckets[0 if k == 64 else p[0] >> k].append(p)
    out: set[Point3] = set()
    for ps in buckets.values():
        out.add(min(ps, key=lambda p: (p[0], p[2])))
        out.add(max(ps, key=lambda p: (p[0], p[2])))
        out.add(min(ps, key=lambda p: (p[1], p[0], p[2])))
        out.add(min(ps, key=lambda p: (-p[1], p[0], p[2])))
    got = sorted(out, key=lambda p: (p[0], p[2], p[1]))
    assert len(got) <= 4 * b
    return got


async def store_for(url: str) -> TrackerStore:
    engine = db.make_engine(url)
    await db.migrate(engine, MIGRATIONS, VERSIONS)
    return TrackerStore(engine)


async def whole(s: TrackerStore, run_id: str, key: str) -> list[Point3]:
    """The series through the ordinary (not downsampled) pages."""
    got: list[Point3] = []
    token = ""
    while True:
        page = await s.history.page(run_id, "alice", key, 0, 10_000, token)
        got += zip(page.steps.tolist(), page.values.tolist(), page.timestamps.tolist(), strict=True)
        token = page.next_page_token
        if not token:
            return got


async def sampled(s: TrackerStore, run_id: str, key: str, max_points: int) -> tuple[bool, list]:
    page = await s.history.page(run_id, "alice", key, max_points, 10_000, "")
    assert not page.next_page_token
    rows = zip(page.steps.tolist(), page.values.tolist(), page.timestamps.tolist(), strict=True)
    return page.downsampled, list(rows)


def reference_summary(points: list[tuple[int, float]], direction: int) -> compare.Summary:
    """A comparison's summary from every (step, value) point, ordered by step: the best is the
    earliest of the lowest (MINIMIZE) or highest values."""
    last_step, last = points[-1]
    pick = min if direction == compare.MINIMIZE else max
    best_step, best = pick(points, key=lambda p: p[1])
    values = [v for _, v in points]
    return compare.Summary(last, last_step, min(values), max(values), best, best_step, len(points))


async def check_answers(
    s: TrackerStore, run_id: str, keys: Sequence[str], ns: Sequence[int], compared: bool = True
) -> None:
    """Downsampled reads are M4 of the whole series; unless not `compared` (series written
    under the store's feet, with no latest point to be found by), so are a comparison's curves,
    and its summaries are those of the whole series."""
    overviews = (await s.history.overviews([run_id], keys))[run_id] if compared else {}
    for key in keys:
        series = await whole(s, run_id, key)
        seen = overviews.get(key)
        assert not compared or (seen is None) == (not series)
        for n in ns:
            downsampled, got = await sampled(s, run_id, key, n)
            if len(series) <= n:
                assert (downsampled, got) == (False, series)
            else:
                assert downsampled and got == reference_m4(series, n), (key, n)
            if seen is not None:  # a comparison's curve: the same sample in one page
                curve = await s.history.curve(run_id, key, n, seen.span)
                rows = zip(curve.steps.tolist(), curve.values.tolist(), strict=True)
                assert (curve.downsampled, list(rows)) == (downsampled, [p[:2] for p in got])
        if seen is not None:
            # a comparison's summary from the summary rows is the one of the whole series
            for direction in (compare.MINIMIZE, compare.MAXIMIZE):
                expected = reference_summary([(p[0], p[1]) for p in series], direction)
                assert compare.summary_of(seen, direction) == expected, (key, direction)


def batch_of(points: Sequence[tuple[str, int, float, int]]) -> Batch:
    keys, steps, values, stamps = zip(*points, strict=True)
    return Batch(list(keys), list(steps), list(values), list(stamps))


# -- summaries and plans, without a database ------------------------------------------------


def test_a_batch_summarizes_the_same_point_by_point_and_with_numpy() -> None:
    """The small batches' Python and the large ones' numpy apply the same rules, ties (equal
    values, steps, timestamps, repeated points) included."""
    rng = random.Random(5)
    for _ in range(500):
        n = rng.randint(1, 60)
        points = [
            (
                rng.choice("ab"),
                rng.choice([rng.randint(-600, 600), rng.randint(-(2**63), 2**63 - 1), 7]),
                rng.choice([0.0, -0.0, 1.0, -1.0, 1e300, 5e-324]),
                rng.randint(1, 3),
            )
            for _ in range(n)
        ]
        batch = batch_of(points)
        assert _small(batch) == _large(batch)


def test_plans() -> None:
    # fits: 12 buckets for 50 points; 1000 steps need 2**7 (8 buckets), read as points
    assert plan(Span(1000, 0, 999), 50) == (7, None)
    # the same steps repeated a lot: the first level's summaries instead of the points
    assert plan(Span(12 * 128 + 1, 0, 999), 50) == (8, 8)
    # 2**20 wide buckets come from level 20, 2**23 from level 20 too (8 rows a bucket)
    assert plan(Span(10**6, 0, 12 * 2**20 - 1), 50) == (20, 20)
    assert plan(Span(10**6, 0, 12 * 2**23 - 1), 50) == (23, 20)
    # past the top level; all int64 steps in one bucket when only one is allowed
    assert plan(Span(10**6, 0, 2**40), 50) == (37, 28)
    assert plan(Span(10**6, -1, 0), 4) == (downsample.WHOLE, 28)
    assert plan(Span(10**6, -(2**63), 2**63 - 1), 8) == (63, 28)


def test_summarize_orders_rows_by_key_level_bucket() -> None:
    """Concurrent batches lock the rows they share in one order (no deadlock)."""
    points = [(k, s, 1.0, 1) for s in range(0, 2**29, 2**21) for k in ("b", "a")]
    columns = summarize(batch_of(points))
    rows = list(zip(columns[0], columns[1], columns[2], strict=True))
    assert rows == sorted(rows) and len(set(rows)) == len(rows)


# -- the property, on both databases ---------------------------------------------------------

VALUES = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2.5, 1e300, -1e300, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False),
)


@st.composite
def histories(draw: Any) -> tuple[list[tuple[list, bool]], list[int]]:
    """Batches (points and whether the batch is sent twice, as a client retry would) and the
    max_points to read them with. A series' (step, timestamp) pairs are distinct but for
    retries: the plain history does not order equal pairs by arrival either."""
    scale = draw(st.sampled_from([0, 1, 3, 300, 2**20, 2**33, 2**58]))
    offset = draw(st.sampled_from([0, -(2**40), 2**50, 17]))
    step = st.one_of(
        st.integers(-5, 40).map(lambda i: max(-(2**63), min(2**63 - 1, offset + i * scale))),
        st.sampled_from([-(2**63), 2**63 - 1, 0]),
    )
    point = st.tuples(st.sampled_from(["a", "b"]), step, VALUES, st.integers(1, 10**9))
    batches = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.lists(point, min_size=1, max_size=5),
                    st.lists(point, min_size=32, max_size=70),
                ),
                st.booleans() if draw(st.booleans()) else st.just(False),
            ),
            min_size=1,
            max_size=8,
        )
    )
    seen: set[tuple[str, int, int]] = set()
    unique = []
    for points, retry in batches:
        fixed = []
        for key, s, v, t in points:
            while (key, s, t) in seen:
                t += 1
            seen.add((key, s, t))
            fixed.append((key, s, v, t))
        unique.append((fixed, retry))
    ns = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))
    return unique, ns


@contextmanager
def loop_with_store(db_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, TrackerStore]]:
    """Hypothesis runs examples synchronously: one loop and one store for all of them."""
    loop = asyncio.new_event_loop()
    s = loop.run_until_complete(store_for(db_url))
    try:
        yield loop, s
    finally:
        loop.run_until_complete(s.close())
        loop.close()


def test_downsampled_answers_are_m4_of_the_whole_series(db_url: str) -> None:
    with loop_with_store(db_url) as (loop, s):
        exp = loop.run_until_complete(s.experiments.create("alice", "e"))

        async def example(batches: list[tuple[list, bool]], ns: list[int]) -> None:
            run = await s.runs.create(exp.id, "alice", "r")
            for points, retry in batches:
                for _ in range(2 if retry else 1):
                    await s.metrics.log(run.id, "alice", batch_of(points))
            await check_answers(s, run.id, ["a", "b"], ns)

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(histories())
        def check(history: tuple[list[tuple[list, bool]], list[int]]) -> None:
            loop.run_until_complete(example(*history))

        check()


async def test_concurrent_writers_merge_into_the_same_summaries(db_url: str) -> None:
    """Eight writers logging into the same buckets at once (PostgreSQL: racing upserts of one
    row, which also must not deadlock): every answer is still M4 of the whole series."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for i in range(8):
            n = rng.choice([1, 3, 40, 200])
            points = [
                (rng.choice("ab"), rng.randrange(5000), rng.random(), 1 + w + 8 * (i * 1000 + j))
                for j in range(n)
            ]
            await s.metrics.log(run.id, "alice", batch_of(points))

    await asyncio.gather(*(writer(w) for w in range(8)))
    await check_answers(s, run.id, ["a", "b"], [1, 7, 50, 400])
    await s.close()


async def test_a_dense_series_answers_from_summaries(db_url: str) -> None:
    """Steps repeated a lot (all within a few steps): more points than 128 per bucket, so the
    buckets widen to the first level's and summaries answer, not 2,000 points."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    rng = random.Random(2)
    for at in range(0, 2000, 500):
        points = [("x", rng.randrange(-3, 4), rng.random(), at + i + 1) for i in range(500)]
        await s.metrics.log(run.id, "alice", batch_of(points))
    before = s.points.reads.points
    await check_answers(s, run.id, ["x"], [4])
    assert s.points.reads.points - before == 2000  # the whole series, by check_answers alone
    before = s.points.reads.points
    downsampled, got = await sampled(s, run.id, "x", 12)
    assert downsampled and 2 <= len(got) <= 8 and s.points.reads.points == before
    # the edge: 128 points for one bucket are read as points, 129 are not
    edge = await s.runs.create(exp.id, "alice", "edge")
    points = [("x", i % 4, float(i % 5), i + 1) for i in range(128)]
    for extra, read in (([], 128), ([("x", 2, -1.0, 500)], 0)):
        await s.metrics.log(edge.id, "alice", batch_of(points[:1] + extra))
        points = points[1:]
        if points:
            await s.metrics.log(edge.id, "alice", batch_of(points))
            points = []
        before = s.points.reads.points
        downsampled, got = await sampled(s, edge.id, "x", 4)
        assert s.points.reads.points - before == read
        assert downsampled and got == reference_m4(await whole(s, edge.id, "x"), 4)
    await s.close()


# -- bounded reads ---------------------------------------------------------------------------


async def test_comparisons_and_plots_read_summaries_and_leave_no_run_out(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CompareRuns, CompareExperiments and PlotMetrics of three 80,000-point runs (more than
    the 200,000 points a whole-series read stopped at, which left the last run out): every run
    summarized, the last one best, curves and lines sampled; no point read but for the curves'
    pages."""
    s = await store_for(db_url)
    service = TrackerService(s, LocalArtifactStore(tmp_path, 1 << 20), redis_url(13))
    exps = [await s.experiments.create("alice", name) for name in ("e0", "e1")]
    ids = []
    for n in range(3):
        run = await s.runs.create(exps[n // 2].id, "alice", f"r{n}")  # e0: r0, r1; e1: r2
        for at in range(0, 80_000, 1000):
            steps = list(range(at, at + 1000))
            # run n reaches its lowest loss, 1 / (n + 2), at step 40,000
            values = [1 / (n + 2) + abs(x - 40_000) / 80_000 for x in steps]
            await s.metrics.log(run.id, "alice", Batch(["loss"] * 1000, steps, values, [1] * 1000))
        ids.append(run.id)
    current_principal.set(Principal("alice", "user"))
    before = s.points.reads.points
    got = await service.CompareRuns(tracker_pb2.CompareRunsRequest(run_ids=ids), None)
    assert s.points.reads.points == before  # summaries only
    assert [r.metrics["loss"].count for r in got.runs] == [80_000] * 3
    assert [r.metrics["loss"].best_step for r in got.runs] == [40_000] * 3
    assert got.best_runs["loss"].run_id == ids[2]
    assert got.best_runs["loss"].value == pytest.approx(1 / 4)
    curves = await service.CompareRuns(
        tracker_pb2.CompareRunsRequest(run_ids=ids, curve_points=100), None
    )
    assert [r.metrics for r in curves.runs] == [r.metrics for r in got.runs]
    for r in curves.runs:
        assert r.curves["loss"].downsampled and len(r.curves["loss"].steps) <= 100

    before = s.points.reads.points
    # the runs read a slice at a time (a statement a slice): here two slices
    monkeypatch.setattr("services.tracker.store.history.MAX_ENTRIES", 2)
    by_exp = await service.CompareExperiments(
        tracker_pb2.CompareExperimentsRequest(experiment_ids=[e.id for e in exps]), None
    )
    assert s.points.reads.points == before
    assert [e.best_runs["loss"].run_id for e in by_exp.experiments] == [ids[1], ids[2]]
    assert by_exp.best_runs["loss"].run_id == ids[2]
    assert by_exp.best_runs["loss"].value == pytest.approx(1 / 4)

    drawn: list[plots.Curves] = []
    monkeypatch.setattr(
        "services.tracker.service.plot_png", lambda curves, *_: drawn.append(curves) or b"png"
    )
    for axis in ("step", "time"):
        await service.PlotMetrics(
            tracker_pb2.PlotMetricsRequest(run_ids=ids, keys=["loss"], width=200, x_axis=axis),
            None,
        )
        lines = drawn[-1]["loss"]
        assert list(lines) == ids
        for n, run_id in enumerate(ids):  # each line sampled, its lowest point kept (M4)
            assert 0 < len(lines[run_id]) <= plots.plot_points(200, 3) == 800
            assert min(y for _, y in lines[run_id]) == pytest.approx(1 / (n + 2))
    await service.fanout.close()
    await s.close()


async def test_a_downsampled_read_loads_rows_in_proportion_to_max_points(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    steps = np.arange(200_000)
    for at in range(0, len(steps), 1000):
        part = steps[at : at + 1000].tolist()
        values = [math.sin(x / 500) for x in part]
        await s.metrics.log(run.id, "alice", Batch(["loss"] * 1000, part, values, [1] * 1000))
    await s.metrics.log(
        run.id, "alice", Batch(["loss"] * 3, [5, 70_000, 199_999], [9.0] * 3, [2] * 3)
    )
    for n in (100, 500, 4000):
        b = n // 4
        reads = (s.points.reads.points, s.points.reads.block_spans, s.points.reads.summaries)
        downsampled, got = await sampled(s, run.id, "loss", n)
        points, spans, summaries = (
            after - before
            for after, before in zip(
                (s.points.reads.points, s.points.reads.block_spans, s.points.reads.summaries),
                reads,
                strict=True,
            )
        )
        assert downsampled and len(got) <= n
        assert (points, spans) == (0, 0) and summaries <= 8 * b + 2, (n, summaries)
        assert (5, 9.0, 2) in got and (199_999, 9.0, 2) in got
    # a series spanning fewer than 256 * B steps is read as points, at most 128 * B of them
    short = await s.runs.create(exp.id, "alice", "short")
    await s.metrics.log(
        short.id, "alice", Batch(["x"] * 1000, list(range(1000)), [0.5] * 1000, [1] * 1000)
    )
    before = s.points.reads.points
    downsampled, got = await sampled(s, short.id, "x", 40)
    assert downsampled and 0 < s.points.reads.points - before <= 128 * 10
    await s.close()


# -- migration, purge, non-finite values -----------------------------------------------------


def _migrate(sync_conn: Any, to: str, down: bool) -> None:
    from alembic import command

    cfg = db._config(MIGRATIONS, VERSIONS)
    cfg.attributes["connection"] = sync_conn
    (command.downgrade if down else command.upgrade)(cfg, to)


async def test_the_upgrade_backfills_summaries_of_rows_and_blocks(db_url: str) -> None:
    """Points stored at tracker_0004 (rows and blocks, some written then, some before) give the
    same answers once upgraded as points logged with summaries."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    rng = random.Random(11)
    for i in range(6):
        n = rng.choice([1, 4, 50, 300])
        points = [
            (
                rng.choice("ab"),
                rng.randrange(-(2**30), 2**30),
                rng.random(),
                10 * (i * 1000 + j) + 1,
            )
            for j in range(n)
        ]
        await s.metrics.log(run.id, "alice", batch_of(points))
    ns = [1, 9, 60, 300]
    await s.points.close()
    async with s.engine.begin() as conn:
        await conn.run_sync(_migrate, "tracker_0004", True)
        # and more at tracker_0004, as its code stored them: a trickle and a block
        await conn.execute(
            text(
                "INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) "
                "VALUES (:r, 'a', 3, 0.25, 7), (:r, 'a', 2000000000, -4.0, 7), (:r, 'c', 1, 1.0, 7)"
            ),
            {"r": run.id},
        )
        block = pack("b", [5, -5, 2**40], [1.5, -1.5, 0.0], [3, 3, 3])
        await conn.execute(
            text(
                "INSERT INTO tracker_metric_blocks (run_id, key, first_step, last_step, "
                "point_count, steps, metric_values, timestamps) VALUES (:r, :k, :f, :l, :n, "
                ":s, :v, :t)"
            ),
            dict(zip("rkflnsvt", (run.id, *block), strict=True)),
        )
        await conn.run_sync(_migrate, "head", False)
    await s.engine.dispose()
    again = await store_for(db_url)
    await check_answers(again, run.id, ["a", "b", "c"], ns, compared=False)
    assert await again.points.count(run.id, "b") == len(await whole(again, run.id, "b"))
    await again.close()


async def test_purge_removes_the_summaries(db_url: str) -> None:
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await s.metrics.log(run.id, "alice", Batch(["x"] * 40, list(range(40)), [1.0] * 40, [1] * 40))
    await s.metrics.log(run.id, "alice", Batch(["y"], [3], [1.0], [1]))
    await s.experiments.set_deleted(exp.id, "alice", True)
    await s.experiments.purge(exp.id, "alice")
    async with s.engine.connect() as conn:
        assert (
            await conn.execute(select(func.count()).select_from(metric_summaries))
        ).scalar() == 0
    await s.close()


async def test_non_finite_values_are_refused_before_any_summary(db_url: str) -> None:
    """A NaN or an infinity anywhere in a batch refuses the whole batch (SQLite would store a
    NaN as NULL, and no ordering of values holds one): the series and its summaries stay as
    they were, and so does every answer."""
    s = await store_for(db_url)
    exp = await s.experiments.create("alice", "e")
    run = await s.runs.create(exp.id, "alice", "r")
    await s.metrics.log(run.id, "alice", Batch(["x"] * 50, list(range(50)), [0.5] * 50, [1] * 50))
    before = await sampled(s, run.id, "x", 8)
    async with s.engine.connect() as conn:
        rows = (await conn.execute(select(metric_summaries))).all()
    for bad in (math.nan, math.inf, -math.inf):
        for size in (1, 40):
            values = [0.1] * (size - 1) + [bad]
            batch = Batch(["x"] * size, list(range(60, 60 + size)), values, [2] * size)
            with pytest.raises(InvalidArgument, match="only finite values"):
                await s.metrics.log(run.id, "alice", batch)
    assert await sampled(s, run.id, "x", 8) == before
    async with s.engine.connect() as conn:
        assert (await conn.execute(select(metric_summaries))).all() == rows
    await s.close()
