"""What a comparison of many runs costs: the per-series summaries CompareRuns and
CompareExperiments need (last, lowest, highest, count), read for every series of many runs.

Baseline: two statements a series (its span, then its top-level summary rows), as the tracker
read them before. Ours: `History.overviews`, one statement for a slice of up to 1,000 runs.
Both read the same summary rows; the answers are checked equal. In-process on the tracker's
store, on SQLite and PostgreSQL, in one run; the median of 5 reads each, and the ratio.

    .venv/bin/python bench/tracker_compare.py [--runs 2000] [--keys 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
from service_kit import db
from tracker_ingest import drop, pg_database

from services.tracker.points.batches import Batch
from services.tracker.points.summaries import LEVELS
from services.tracker.store import TrackerStore
from services.tracker.store.history import Overview

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "services" / "tracker" / "migrations"
POINTS = 50  # per series: the read costs the same for any length (summary rows)
READS = 5


async def per_series(store: TrackerStore, run_ids: list[str], keys: list[str]) -> dict:
    """The baseline: a span and a summaries statement for each series."""
    out: dict[str, dict[str, Overview]] = {r: {} for r in run_ids}
    top = LEVELS[-1]
    for run_id in run_ids:
        for key in keys:
            span = await store.points.span(run_id, key)
            if not span.count:
                continue
            rows = await store.points.summaries(
                run_id, key, top, span.first_step >> top, span.last_step >> top
            )
            lo, hi = int(np.argmin(rows.low.values)), int(np.argmax(rows.high.values))
            out[run_id][key] = Overview(
                span,
                (int(rows.last.steps[-1]), float(rows.last.values[-1])),
                (int(rows.low.steps[lo]), float(rows.low.values[lo])),
                (int(rows.high.steps[hi]), float(rows.high.values[hi])),
            )
    return out


async def timed(read: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    times, got = [], None
    for _ in range(READS):
        started = time.perf_counter()
        got = await read()
        times.append(time.perf_counter() - started)
    return statistics.median(times), got


async def measure(url: str, runs: int, keys: list[str]) -> tuple[float, float]:
    engine = db.make_engine(url)
    await db.migrate(engine, MIGRATIONS, "alembic_version_tracker")
    store = TrackerStore(engine)
    try:
        exp = await store.experiments.create("bench", "compare")
        ids = []
        steps = list(range(POINTS)) * len(keys)
        names = [k for k in keys for _ in range(POINTS)]
        for n in range(runs):
            run = await store.runs.create(exp.id, "bench", f"r{n}")
            values = [1.0 / (n + 1 + i) for i in range(len(steps))]
            await store.metrics.log(run.id, "bench", Batch(names, steps, values, [1] * len(steps)))
            ids.append(run.id)
        base_s, base = await timed(lambda: per_series(store, ids, keys))
        ours_s, ours = await timed(lambda: store.history.overviews(ids, []))
        assert ours == base, "the two reads disagree"
        return base_s, ours_s
    finally:
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=2)
    args = ap.parse_args()
    keys = [f"m{i}" for i in range(args.keys)]
    series = args.runs * args.keys
    print(f"summaries of {args.runs} runs x {args.keys} keys ({series} series), median of {READS}:")
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = asyncio.run(measure(f"sqlite+aiosqlite:///{tmp}/bench.db", args.runs, keys))
    name, dsn = asyncio.run(pg_database())
    try:
        pg = asyncio.run(
            measure(dsn.replace("postgresql://", "postgresql+asyncpg://"), args.runs, keys)
        )
    finally:
        asyncio.run(drop(name))
    for label, (base_s, ours_s) in (("sqlite", sqlite), ("postgresql", pg)):
        print(
            f"  {label:10s} per series (before): {base_s * 1e3:8.1f} ms   "
            f"one statement a slice (ours): {ours_s * 1e3:7.1f} ms   {base_s / ours_s:5.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
