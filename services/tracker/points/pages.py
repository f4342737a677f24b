"""The read side shared by both databases: which blocks a page must load, the merge of rows and
blocks into one ordered page, the read statements in each driver's parameter style (pages,
a series' summaries for downsampling, many series' top-level summaries for comparisons), and
summary rows as columns."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from .columns import NONE, STAMP, STEP, VALUE, Columns
from .downsample import Summaries
from .summaries import COLUMNS as SUMMARY_COLUMNS

LOWEST = -(2**63)  # "from the first step"


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


def read_statements(mark: str) -> dict[str, str]:
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
    run, key, level = marks(3)
    span = (
        "SELECT count(*), coalesce(sum(point_count), 0), coalesce(min(first_step), 0), "
        f"coalesce(max(last_step), 0) FROM tracker_metric_summaries WHERE run_id = {run} "
        f"AND key = {key} AND level = {level}"
    )
    run, key, level, lo, hi = marks(5)
    summaries = (
        f"SELECT bucket, {', '.join(SUMMARY_COLUMNS[4:])} FROM tracker_metric_summaries "
        f"WHERE run_id = {run} AND key = {key} AND level = {level} AND bucket >= {lo} "
        f"AND bucket <= {hi} ORDER BY bucket"
    )
    # Many runs' series at once (comparisons): their top-level rows, by series and bucket, as
    # run_id, key, point_count, then the "summaries" columns. The runs (and keys) are bound as
    # one array: a Postgres array, or a JSON array that SQLite reads with json_each.
    level, run_ids, keys = marks(3)
    one_of = {
        "?": lambda ids: f"IN (SELECT value FROM json_each({ids}))",
        "$": lambda ids: f"= ANY({ids}::varchar[])",
    }[mark]
    tops = (
        f"SELECT run_id, key, point_count, bucket, {', '.join(SUMMARY_COLUMNS[4:])} "
        f"FROM tracker_metric_summaries WHERE level = {level} AND run_id {one_of(run_ids)}"
    )
    order = " ORDER BY run_id, key, bucket"
    return {
        "rows": rows,
        "spans": spans,
        "span": span,
        "summaries": summaries,
        "tops": tops + order,
        "tops_of_keys": f"{tops} AND key {one_of(keys)}{order}",
    }


def tops_of(rows: Sequence[Sequence[Any]]) -> dict[tuple[str, str], tuple[int, Summaries]]:
    """Rows of the "tops" statements per series: its size and its summaries."""
    out = {}
    for series, group in itertools.groupby(rows, lambda r: (r[0], r[1])):
        part = list(group)
        out[series] = (sum(int(r[2]) for r in part), summaries_of([r[3:] for r in part]))
    return out


def summaries_of(rows: Sequence[Sequence[Any]]) -> Summaries:
    """Summary rows as read by the "summaries" statement, as columns."""
    if not rows:
        return Summaries(np.empty(0, STEP), NONE, NONE, NONE, NONE)
    columns = list(zip(*rows, strict=True))
    roles = [
        Columns(
            np.array(columns[i], STEP),
            np.array(columns[i + 1], VALUE),
            np.array(columns[i + 2], STAMP),
        )
        for i in (1, 4, 7, 10)
    ]
    return Summaries(np.array(columns[0], STEP), *roles)
