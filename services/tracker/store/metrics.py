"""Logging metric points: a batch is checked here, then appended whole by the point store."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from service_kit.errors import FieldViolation, InvalidArgument, NotFound, shown

from .. import filters
from ..points.backend import PointStore, UnknownRun
from ..points.batches import Batch, newest
from .common import check_key, now_ms

if TYPE_CHECKING:
    from .runs import Runs

MAX_BATCH = 1000


class Point(NamedTuple):
    key: str
    value: float
    step: int
    timestamp: int = 0  # ms since the epoch; 0 means "now"


class Metrics:
    def __init__(self, points: PointStore, runs: Runs) -> None:
        self.points = points
        self.runs = runs

    async def log(
        self, run_id: str, owner: str | None, batch: Batch, checked_run: bool = False
    ) -> Batch:
        """Append a batch atomically and move each series' latest point forward; returns it
        with the timestamps it was stored with. Non-finite values are rejected: they cannot
        be compared or charted. `checked_run`: the caller has seen the run already."""
        keys, steps, values, stamps = batch
        if len(keys) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} points per batch, got {len(keys)}",
                [FieldViolation("metrics", "too many")],
            )
        if not checked_run:
            await self.runs.check(run_id, owner)
        if not keys:
            return batch
        for key in set(keys):
            check_key(key, "metrics")
        # One sum in C instead of a test per point; a NaN or an infinity anywhere makes it
        # non-finite (so may an overflow: then the search below finds nothing).
        if not math.isfinite(sum(values)):
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise InvalidArgument(
                        f"metric {keys[i]!r} at step {steps[i]} is {v}: only finite values "
                        "are stored",
                        [FieldViolation(f"metrics[{i}].value", "not finite")],
                    )
        # A moment outside years 1 to 9999 (e.g. seconds = 2**62) cannot be stored or shown.
        if min(stamps) < filters.MIN_MS or max(stamps) > filters.MAX_MS:
            i = next(i for i, t in enumerate(stamps) if not filters.MIN_MS <= t <= filters.MAX_MS)
            raise InvalidArgument(
                f"metric {keys[i]!r} at step {steps[i]} has a timestamp outside years 1 to 9999",
                [FieldViolation(f"metrics[{i}].timestamp", "out of range")],
            )
        if 0 in stamps:
            stamp = now_ms()
            stamps = [t or stamp for t in stamps] if any(stamps) else [stamp] * len(stamps)
        stored = Batch(keys, steps, values, stamps)
        try:
            await self.points.append(run_id, stored, newest(stored))
        except UnknownRun:
            self.runs.forget(run_id)
            raise NotFound(f"no run {shown(run_id)}") from None
        return stored
