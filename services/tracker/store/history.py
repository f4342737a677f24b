"""Reading metric series: a run's history a page at a time (downsampled on request), and whole
series of many runs for comparisons and plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from service_kit import pagination
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..points.backend import PointStore
from ..points.columns import Columns
from ..tables import latest_metrics
from .common import MAX_ENTRIES, at_most
from .runs import Runs

SAMPLE_READ = 100_000  # points read at a time to downsample a series
# Page tokens: a metric history's (mode, last step sent, points at that step already sent or
# the offset into the sample).
TOKEN = "tracker_metric_history"
TOKEN_FIELDS = (pagination.one_of("step", "sample"), pagination.INT64, pagination.OFFSET)


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
        """A series ordered by step; with max_points, about that many points spread evenly over
        the steps (first and last kept)."""
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
            return Series(*got, "", False)
        page = Columns(*(column[:size] for column in got))
        after = _after(page, from_step, skip)
        return Series(*page, pagination.encode(TOKEN, ("step", *after), context), False)

    async def _sample(
        self, run_id: str, key: str, max_points: int, size: int, offset: int, context: Any
    ) -> Series | None:
        """Every k-th point in (step, timestamp) order, and the last, when the series is
        longer than max_points; pages are offsets into that sample, which max_points keeps
        small. None when the whole series fits the first page. The series is read
        SAMPLE_READ points at a time, so memory stays bounded however long it is."""
        total = await self.points.count(run_id, key)
        if total <= max_points and not offset:
            return None
        every = math.ceil(total / max_points)
        kept: list[Columns] = []
        last: Columns | None = None
        seen, from_step, skip = 0, None, 0
        while True:
            got = await self.points.page(run_id, key, from_step, skip, SAMPLE_READ)
            at = np.arange(seen, seen + len(got))
            kept.append(Columns(*(column[at % every == 0] for column in got)))
            seen += len(got)
            if len(got):
                last = Columns(*(column[-1:] for column in got))
            if len(got) < SAMPLE_READ:
                break
            from_step, skip = _after(got, from_step, skip)
        if last is not None and (seen - 1) % every:  # the last point, always
            kept.append(last)
        sample = [np.concatenate(c) for c in zip(*kept, strict=True)]
        more = offset + size < len(sample[0])
        return Series(
            *(column[offset : offset + size] for column in sample),
            pagination.encode(TOKEN, ("sample", 0, offset + size), context) if more else "",
            True,
        )

    async def series(
        self, run_ids: Sequence[str], keys: Sequence[str], limit: int = 200_000
    ) -> dict[str, dict[str, list[tuple[int, float, int]]]]:
        """(step, value, timestamp) per run and key, ordered by step (all keys when none
        given), at most `limit` points in all. The caller has checked the runs."""
        at_most(len(keys), "metric_keys")
        out: dict[str, dict[str, list[tuple[int, float, int]]]] = {r: {} for r in run_ids}
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
        for run_id, key in found:
            if limit <= 0:
                break
            got = await self.points.page(run_id, key, None, 0, limit)
            out[run_id][key] = got.rows()
            limit -= len(got)
        return out
