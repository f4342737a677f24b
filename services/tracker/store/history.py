"""Reading metric series: a run's history a page at a time (downsampled on request), and what
comparisons and plots need of many runs' series (their summaries, and sampled curves), read in
proportion to the runs, not to the series' lengths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from service_kit import pagination
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..points import downsample
from ..points.backend import PointStore
from ..points.columns import NONE, Columns
from ..points.downsample import Span
from ..tables import latest_metrics
from .common import MAX_ENTRIES, at_most
from .runs import Runs

# Page tokens: a metric history's (mode, last step sent, points at that step already sent or
# the offset into the sample).
TOKEN = "tracker_metric_history"
TOKEN_FIELDS = (pagination.one_of("step", "sample"), pagination.INT64, pagination.OFFSET)


class Overview(NamedTuple):
    """A series as a comparison needs it: its span, and its last, lowest and highest points
    as (step, value)."""

    span: Span
    last: tuple[int, float]
    low: tuple[int, float]
    high: tuple[int, float]


class Series(NamedTuple):
    """A page of one metric's history, as numpy columns."""

    steps: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray
    next_page_token: str
    downsampled: bool


def _after(page: Columns, from_step: int | None, skip: int) -> tuple[int, int]:
    """The keyset cursor past a full page: its last step, and how many points at that step
    were sent already (steps may repeat, even across pages)."""
    end = int(page.steps[-1])
    n = int((page.steps == end).sum())
    if from_step == end and n == len(page):
        n += skip
    return end, n


class History:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], points: PointStore, runs: Runs
    ) -> None:
        self.sessions = sessions
        self.points = points
        self.runs = runs

    async def page(
        self, run_id: str, owner: str | None, key: str, max_points: int, size: int, token: str
    ) -> Series:
        """A series ordered by step; with max_points, when the series is longer, at most that
        many points (4 when it is below 4): M4 downsampling, each bucket of steps' first,
        lowest, highest and last point."""
        size = pagination.page_size(size, 1000, 10_000)
        # The token says how the first page was read (sampled or not), so a series that grows
        # past max_points while it is being paged keeps the way it started.
        context = (run_id, key, max(max_points, 0))
        cursor = pagination.decode(token, TOKEN, TOKEN_FIELDS, context)
        await self.runs.check(run_id, owner)
        if max_points > 0 and (cursor is None or cursor[0] == "sample"):
            offset = 0 if cursor is None else cursor[2]
            sampled = await self._sample(run_id, key, max_points, size, offset, context)
            if sampled is not None:
                return sampled
        # Keyset paging on step, so reading a long history costs the same per page from the
        # first to the last.
        from_step, skip = (None, 0) if cursor is None else (cursor[1], cursor[2])
        got = await self.points.page(run_id, key, from_step, skip, size + 1)
        if len(got) <= size:
            if not len(got) and cursor is None:
                # Nothing stored: the run may be gone, purged through another tracker process
                # since this one cached its owner (runs.check): say so rather than "empty".
                await self.runs.get(run_id, owner)
            return Series(*got, "", False)
        page = Columns(*(column[:size] for column in got))
        after = _after(page, from_step, skip)
        return Series(*page, pagination.encode(TOKEN, ("step", *after), context), False)

    async def _sample(
        self, run_id: str, key: str, max_points: int, size: int, offset: int, context: Any
    ) -> Series | None:
        """The series downsampled by M4 (points/downsample.py) when it is longer than
        max_points; pages are offsets into that sample, which max_points keeps small. None when
        the whole series fits the first page. The work is in proportion to max_points, not to
        the series: summaries, or the points of a series spanning few steps."""
        span = await self.points.span(run_id, key)
        if span.count <= max_points and not offset:
            return None
        sample = await self._m4(run_id, key, max_points, span)
        more = offset + size < len(sample)
        return Series(
            *(column[offset : offset + size] for column in sample),
            pagination.encode(TOKEN, ("sample", 0, offset + size), context) if more else "",
            True,
        )

    async def _m4(self, run_id: str, key: str, max_points: int, span: Span) -> Columns:
        if not span.count:
            return NONE
        shift, level = downsample.plan(span, max_points)
        if level is None:
            # Points arriving meanwhile may reach past the span: the plan's buckets end there.
            limit = downsample.RAW_PER_BUCKET * downsample.buckets_for(max_points)
            got = await self.points.page(run_id, key, span.first_step, 0, limit)
            keep = got.steps <= span.last_step
            return downsample.of_points(Columns(*(c[keep] for c in got)), shift)
        lo, hi = span.first_step >> level, span.last_step >> level
        rows = await self.points.summaries(run_id, key, level, lo, hi)
        return downsample.of_summaries(rows, shift, level)

    async def overviews(
        self, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[str, dict[str, Overview]]:
        """Per run and key (all keys when none given): the series' size, last point, and
        lowest and highest points (the earliest on a tie), from its top-level summary rows: a
        few rows a series, however long it is, read for a slice of runs in one statement. The
        caller has checked the runs."""
        at_most(len(keys), "metric_keys")
        out: dict[str, dict[str, Overview]] = {r: {} for r in run_ids}
        ids = list(dict.fromkeys(run_ids))
        for at in range(0, len(ids), MAX_ENTRIES):
            tops = await self.points.tops(ids[at : at + MAX_ENTRIES], list(keys))
            for (run_id, key), (count, rows) in tops.items():
                lo, hi = int(np.argmin(rows.low.values)), int(np.argmax(rows.high.values))
                out[run_id][key] = Overview(
                    # the buckets are in step order: the first's first step is the lowest
                    Span(count, int(rows.first.steps[0]), int(rows.last.steps[-1])),
                    (int(rows.last.steps[-1]), float(rows.last.values[-1])),
                    (int(rows.low.steps[lo]), float(rows.low.values[lo])),
                    (int(rows.high.steps[hi]), float(rows.high.values[hi])),
                )
        return out

    async def curves(
        self, run_ids: Sequence[str], keys: Sequence[str], max_points: int
    ) -> dict[str, dict[str, Series]]:
        """Per run and key (all keys when none given): `curve` of the series. The caller has
        checked the runs."""
        out: dict[str, dict[str, Series]] = {r: {} for r in run_ids}
        for run_id, key in await self._series_of(run_ids, keys):
            span = await self.points.span(run_id, key)
            if span.count:
                out[run_id][key] = await self.curve(run_id, key, max_points, span)
        return out

    async def curve(self, run_id: str, key: str, max_points: int, span: Span) -> Series:
        """The series as GetMetricHistory(max_points) answers it, in one page: every point
        when it has at most max_points, else its M4 sample (downsampled)."""
        if span.count <= max_points:
            got = await self.points.page(run_id, key, None, 0, max_points)
            return Series(*got, "", False)
        return Series(*await self._m4(run_id, key, max_points, span), "", True)

    async def _series_of(self, run_ids: Sequence[str], keys: Sequence[str]) -> list[Any]:
        """(run_id, key) of every series of the runs, of the keys when some are given."""
        at_most(len(keys), "metric_keys")
        found = []
        ids = list(run_ids)
        # Every series has a latest point: its row names the series without reading it. The
        # runs of many experiments are asked for a slice at a time, within what a statement
        # can bind.
        for at in range(0, len(ids), MAX_ENTRIES):
            query = select(latest_metrics.c.run_id, latest_metrics.c.key).where(
                latest_metrics.c.run_id.in_(ids[at : at + MAX_ENTRIES])
            )
            if keys:
                query = query.where(latest_metrics.c.key.in_(list(keys)))
            async with self.sessions() as s:
                found += (
                    await s.execute(query.order_by(latest_metrics.c.run_id, latest_metrics.c.key))
                ).all()
        return found
