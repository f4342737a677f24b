"""Per-series summaries, the write side: what a batch adds to tracker_metric_summaries.

At each level L of LEVELS, a series' steps fall in buckets of 2**L steps (bucket = step >> L,
an arithmetic shift, so negative steps have buckets too). A bucket's row holds how many points
it has and four of them, each its step, value and timestamp: the first and the last by
(step, timestamp), the lowest and the highest value (ties: the smallest (step, timestamp)).
That is what M4 downsampling keeps of a bucket (downsample.py), and summaries of adjacent
buckets merge into the summary of their union, so a read at any resolution of 2**L steps or
coarser reads rows instead of points.

A batch's summaries are computed here, one row per (key, level, bucket) it touches, and merged
into the stored row by an upsert in the batch's own transaction (UPSERT_SET, the same rules):
counts add; the first is the smallest (step, timestamp), the stored one on a tie (it arrived
first); the last is the largest, the new one on a tie (as `batches.newest`); the lowest and
highest keep the stored one when value, step and timestamp all tie. Values are finite: the
tracker refuses NaN and infinities before a batch gets here (store/metrics.py), which the
comparisons rely on (and SQLite would store a NaN as NULL).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .batches import Batch
from .columns import STAMP, STEP, VALUE

LEVELS = (8, 12, 16, 20, 24, 28)
ROLES = ("first", "last", "min", "max")
# A summary row after its run_id, in this order everywhere (statements, unnest arrays).
COLUMNS = (
    "key",
    "level",
    "bucket",
    "point_count",
    *(f"{role}_{part}" for role in ROLES for part in ("step", "value", "timestamp")),
)
SMALL = 16  # batches up to this size are summarized in plain Python: numpy's fixed cost is more

_ET, _T = "excluded", "tracker_metric_summaries"


def _pair(role: str, row: str) -> str:
    return f"({row}.{role}_step, {row}.{role}_timestamp)"


# When the batch's point replaces the stored one, per role (see the module's rules).
_REPLACES = {
    "first": f"{_pair('first', _ET)} < {_pair('first', _T)}",
    "last": f"{_pair('last', _ET)} >= {_pair('last', _T)}",
    "min": f"({_ET}.min_value < {_T}.min_value OR ({_ET}.min_value = {_T}.min_value AND "
    f"{_pair('min', _ET)} < {_pair('min', _T)}))",
    "max": f"({_ET}.max_value > {_T}.max_value OR ({_ET}.max_value = {_T}.max_value AND "
    f"{_pair('max', _ET)} < {_pair('max', _T)}))",
}
# The upsert's conflict target and merge, the same on PostgreSQL and SQLite (both compare row
# values, and both evaluate every SET expression against the stored row).
UPSERT_SET = "ON CONFLICT (run_id, key, level, bucket) DO UPDATE SET " + ", ".join(
    [
        f"point_count = {_T}.point_count + {_ET}.point_count",
        *(
            f"{role}_{part} = CASE WHEN {_REPLACES[role]} THEN {_ET}.{role}_{part} "
            f"ELSE {_T}.{role}_{part} END"
            for role in ROLES
            for part in ("step", "value", "timestamp")
        ),
    ]
)


def summarize(batch: Batch) -> list[list[Any]]:
    """The batch's summary rows as COLUMNS (lists), sorted by key, level and bucket: concurrent
    batches then lock the rows they share in one order (no deadlock on PostgreSQL)."""
    n = len(batch.keys)
    if n == 0:
        return [[] for _ in COLUMNS]
    return _small(batch) if n <= SMALL else _large(batch)


def _small(batch: Batch) -> list[list[Any]]:
    """The rules point by point, in arrival order."""
    got: dict[tuple[str, int, int], list[Any]] = {}
    for key, step, value, stamp in zip(*batch, strict=True):
        value = float(value)
        for level in LEVELS:
            at = (key, level, step >> level)
            row = got.get(at)
            if row is None:
                got[at] = [1, *([step, value, stamp] * 4)]
                continue
            row[0] += 1
            if (step, stamp) < (row[1], row[3]):
                row[1:4] = step, value, stamp
            if (step, stamp) >= (row[4], row[6]):
                row[4:7] = step, value, stamp
            if (value, step, stamp) < (row[8], row[7], row[9]):
                row[7:10] = step, value, stamp
            if (-value, step, stamp) < (-row[11], row[10], row[12]):
                row[10:13] = step, value, stamp
    rows = [(*at, *row) for at, row in sorted(got.items())]
    return [list(c) for c in zip(*rows, strict=True)]


def _large(batch: Batch) -> list[list[Any]]:
    """The same with numpy. Sorted by (key, step, timestamp, arrival) (a block's steps usually
    are already), a bucket is a run of that order: its first and last points are the run's
    ends, its lowest and highest the run's earliest extremes. Each level then merges the
    previous level's rows, which are few, the same way."""
    keys, steps, values, stamps = batch
    names = sorted(set(keys))
    s, v, t = np.asarray(steps, STEP), np.asarray(values, VALUE), np.asarray(stamps, STAMP)
    kid = np.zeros(len(s), np.int64)
    if len(names) > 1:
        index = {k: i for i, k in enumerate(names)}
        kid = np.array([index[k] for k in keys], np.int64)
        order = np.lexsort((t, s, kid))  # stable: arrival order among ties
    elif not (s[1:] > s[:-1]).all():
        order = np.lexsort((t, s))
    else:
        order = None
    if order is not None:
        s, v, t, kid = s[order], v[order], t[order], kid[order]
    # the finer rows: a point is its own summary to start with
    rows = (kid, s, np.ones(len(s), np.int64), *((s, v, t) * 4))
    parts = []
    for level in LEVELS:
        rows = _merge(rows, level)
        parts.append([rows[0], np.full(len(rows[0]), level), rows[1] >> level, *rows[2:]])
    columns = [np.concatenate(c) for c in zip(*parts, strict=True)]
    if len(names) > 1:  # by level, then key: sort by key first
        resort = np.lexsort((columns[2], columns[1], columns[0]))
        columns = [c[resort] for c in columns]
    out = [c.tolist() for c in columns]
    out[0] = [names[i] for i in out[0]]
    return out


def _merge(rows: tuple[np.ndarray, ...], level: int) -> tuple[np.ndarray, ...]:
    """Rows (key, a step of the bucket, count, then first, last, min and max as step, value,
    timestamp) in (key, step) order, merged per bucket of `level`."""
    kid, step, count = rows[:3]
    starts = runs(kid, step >> level)
    if len(starts) == len(kid):
        return rows
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:] - 1
    ends[-1] = len(kid) - 1
    low = earliest(rows[10], starts, ends, np.minimum)
    high = earliest(rows[13], starts, ends, np.maximum)
    return (
        kid[starts],
        step[starts],
        np.add.reduceat(count, starts),
        *(c[starts] for c in rows[3:6]),
        *(c[ends] for c in rows[6:9]),
        *(c[low] for c in rows[9:12]),
        *(c[high] for c in rows[12:15]),
    )


def runs(*columns: np.ndarray) -> np.ndarray:
    """Where each run of equal rows starts (np.r_ and np.diff cost more than this, here)."""
    new = np.empty(len(columns[0]), bool)
    new[0] = True
    np.not_equal(columns[0][1:], columns[0][:-1], out=new[1:])
    for c in columns[1:]:
        new[1:] |= c[1:] != c[:-1]
    return np.flatnonzero(new)


def earliest(
    values: np.ndarray, starts: np.ndarray, ends: np.ndarray, extreme: np.ufunc
) -> np.ndarray:
    """Per run, the first position holding the run's extreme value."""
    best = extreme.reduceat(values, starts)
    at = np.flatnonzero(values == np.repeat(best, ends - starts + 1))
    return at[np.searchsorted(at, starts)]
