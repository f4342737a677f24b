"""Side-by-side comparison of runs: metric summaries, the best run per metric."""

from __future__ import annotations

from dataclasses import dataclass

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


def summary_of(
    last: tuple[int, float],
    low: tuple[int, float],
    high: tuple[int, float],
    count: int,
    direction: int,
) -> Summary:
    """The Summary of a series known by its last, lowest and highest (step, value) points
    (the earliest on a tie, as `summarize` picks them) and its size."""
    best_step, best = low if direction == MINIMIZE else high
    return Summary(last[1], last[0], low[1], high[1], best, best_step, count)
