"""Side-by-side comparison of runs: metric summaries, the best run per metric."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store.history import Overview

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


def best_run(summaries: dict[str, Summary], direction: int) -> tuple[str, Summary] | None:
    """The run whose best value is best (ties: the earlier run id order given)."""
    if not summaries:
        return None
    pick = min if direction == MINIMIZE else max
    return pick(summaries.items(), key=lambda kv: kv[1].best)


def summary_of(seen: Overview, direction: int) -> Summary:
    """The Summary of a series known by its last, lowest and highest (step, value) points
    (the earliest on a tie) and its size."""
    best_step, best = seen.low if direction == MINIMIZE else seen.high
    return Summary(
        seen.last[1], seen.last[0], seen.low[1], seen.high[1], best, best_step, seen.span.count
    )
