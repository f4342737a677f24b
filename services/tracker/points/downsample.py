"""Downsampling, the read side: M4 (Jugel et al., VLDB 2014) over buckets of 2**shift steps.

A series longer than max_points is cut into at most B = max(1, max_points // 4) buckets of
2**shift steps (bucket = step >> shift, shift the smallest that fits the series' steps into B
buckets), and each bucket keeps its first, lowest, highest and last point (by step and
timestamp; summaries.py says how ties go), each point once, all in (step, timestamp) order: at
most 4 * B points, and a chart drawn from them has the same pixels' extremes as one drawn from
every point.

Where the buckets are at least 2**LEVELS[0] steps wide the answer comes from stored summaries
at the largest level not over the shift, merging 2**(shift - level) of them per bucket (at most
8 * B rows; a shift over the top level reads the top level's rows, never more than the
series' points). Narrower buckets mean a series of fewer than 2**LEVELS[0] * B steps: its
points are read and bucketed here, unless there are more than RAW_PER_BUCKET * B of them (steps
repeat a lot: all at step 0, say), when the buckets widen to the first level's and summaries
answer again. So a read loads O(max_points) rows however long the series is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .columns import NONE, Columns
from .summaries import LEVELS, earliest, runs

RAW_PER_BUCKET = 128  # points read per bucket at most when the buckets are narrower than a level
WHOLE = 64  # a shift that puts every int64 step in one bucket


class Span(NamedTuple):
    """A series' size and its first and last step (both 0 when it has no points)."""

    count: int
    first_step: int
    last_step: int


class Plan(NamedTuple):
    shift: int  # buckets of 2**shift steps (WHOLE: one bucket)
    level: int | None  # the summaries' level to read; None: read the points


class Summaries(NamedTuple):
    """Summary rows of one level as columns, ordered by bucket: each role's points."""

    buckets: np.ndarray
    first: Columns
    last: Columns
    low: Columns
    high: Columns


def buckets_for(max_points: int) -> int:
    return max(1, max_points // 4)


def plan(span: Span, max_points: int) -> Plan:
    """How to bucket a series for max_points."""
    b = buckets_for(max_points)
    first, last = span.first_step, span.last_step
    shift = next((k for k in range(WHOLE) if (last >> k) - (first >> k) < b), WHOLE)
    if shift < LEVELS[0]:
        if span.count <= RAW_PER_BUCKET * b:
            return Plan(shift, None)
        shift = LEVELS[0]
    return Plan(shift, max(level for level in LEVELS if level <= shift))


def group(values: np.ndarray, by: int) -> np.ndarray:
    """Output buckets of steps (by = shift) or of level buckets (by = shift - level)."""
    return np.zeros(len(values), np.int64) if by >= WHOLE else values >> by


def of_points(points: Columns, shift: int) -> Columns:
    """M4 of points in (step, timestamp) order: each point is its own summary."""
    if not len(points):
        return NONE
    return m4(group(points.steps, shift), points, points, points, points)


def of_summaries(rows: Summaries, shift: int, level: int) -> Columns:
    """M4 from one level's summaries, 2**(shift - level) of them per output bucket."""
    if not len(rows.buckets):
        return NONE
    by = WHOLE if shift >= WHOLE else shift - level
    return m4(group(rows.buckets, by), rows.first, rows.last, rows.low, rows.high)


def m4(groups: np.ndarray, first: Columns, last: Columns, low: Columns, high: Columns) -> Columns:
    """Per run of equal `groups`, whose members come in (step, timestamp) order (points sorted,
    or summaries by bucket): the first of `first`, the last of `last`, the lowest of `low` and
    the highest of `high`, the earliest on a tie; then each distinct point once, in (step,
    timestamp) order. No sort but of the few picked points."""
    starts = runs(groups)
    ends = np.r_[starts[1:], len(groups)] - 1
    picks = [(first, starts), (last, ends), (low, earliest(low.values, starts, ends, np.minimum))]
    picks.append((high, earliest(high.values, starts, ends, np.maximum)))
    steps, values, stamps = (
        np.concatenate([getattr(c, name)[i] for c, i in picks])
        for name in ("steps", "values", "timestamps")
    )
    order = np.lexsort((values, stamps, steps))
    steps, values, stamps = steps[order], values[order], stamps[order]
    keep = np.r_[
        True, (steps[1:] != steps[:-1]) | (stamps[1:] != stamps[:-1]) | (values[1:] != values[:-1])
    ]
    return Columns(steps[keep], values[keep], stamps[keep])
