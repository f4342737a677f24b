"""Side-by-side comparison of runs: metric summaries, the best run per metric."""

from __future__ import annotations

from dataclasses import dataclass

from .points import downsample
from .points.columns import Columns

MINIMIZE, MAXIMIZE = 1, 2
MAX_CURVE_POINTS = 2000  # a comparison's curves, per run and metric


def default_direction(key: str) -> int:
    """Lower is better for losses and errors, higher for everything else."""
    lowered = key.lower()
    return MINIMIZE if ("loss" in lowered or "error" in lowered) else MAXIMIZE


@dataclass
class Summary:
    last: float
    last_step: int
    min: float
    max: float
    best: float
    best_step: int
    count: int


def summarize(points: list[tuple[int, float]], direction: int) -> Summary:
    """points: (step, value) ordered by step."""
    last_step, last = points[-1]
    pick = min if direction == MINIMIZE else max
    best_step, best = pick(points, key=lambda p: p[1])
    values = [v for _, v in points]
    return Summary(last, last_step, min(values), max(values), best, best_step, len(points))


def best_run(summaries: dict[str, Summary], direction: int) -> tuple[str, Summary] | None:
    """The run whose best value is best (ties: the earlier run id order given)."""
    if not summaries:
        return None
    pick = min if direction == MINIMIZE else max
    return pick(summaries.items(), key=lambda kv: kv[1].best)


def curve(points: list[tuple[int, float, int]], max_points: int) -> tuple[Columns, bool]:
    """A series (step, value, timestamp) as GetMetricHistory's max_points gives it: whole when
    it has at most max_points points, else its M4 sample at the same buckets (the history
    reads the sample from stored summaries; here the points are in memory already). True when
    points were dropped."""
    columns = Columns.of(sorted(points, key=lambda p: (p[0], p[2])))
    if len(points) <= max_points:
        return columns, False
    span = downsample.Span(len(points), int(columns.steps[0]), int(columns.steps[-1]))
    shift, _ = downsample.plan(span, max_points)
    return downsample.of_points(columns, shift), True
