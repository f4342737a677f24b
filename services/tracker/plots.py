"""Metric curves as a PNG: one panel per metric key, one line per run."""

from __future__ import annotations

import datetime as dt
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Curves = dict[str, dict[str, list[tuple[float, float]]]]

# matplotlib's tick arithmetic overflows for values near the largest double (1.7e308): larger
# magnitudes than this cannot be drawn.
MAX_PLOTTED = 1e307

# The points of a whole plot's lines: 4 a pixel column (M4's first, last, lowest and highest)
# for a line of few, fewer each when many share the plot (20 runs of 10 metrics).
PLOT_POINTS = 400_000
MIN_LINE_POINTS = 400

STEP_LABEL = "step"
TIME_LABEL = "seconds since the run started"


def seconds_since_start(timestamp_ms: int, start: dt.datetime) -> float:
    """A point's time on the plot's time axis: seconds after its run's start (so runs started
    hours apart share one axis, and the numbers stay small)."""
    begun = start if start.tzinfo else start.replace(tzinfo=dt.UTC)
    return timestamp_ms / 1000.0 - begun.timestamp()


def plot_points(width: int, lines: int) -> int:
    """How many points each of `lines` lines spanning `width` pixels is sampled to."""
    return max(MIN_LINE_POINTS, min(4 * width, PLOT_POINTS // max(1, lines)))


def unplottable(curves: Curves) -> str | None:
    """The first key with a value beyond ±MAX_PLOTTED, which no axis can show; None if none."""
    for key, per_run in curves.items():
        for points in per_run.values():
            if points and max(abs(y) for _, y in points) > MAX_PLOTTED:
                return key
    return None


def build_figure(
    curves: Curves,
    names: dict[str, str],
    keys: list[str],
    by_time: bool,
    width: int,
    height: int,
) -> Figure:
    """curves[key][run_id] = [(x, y), ...], x a step or seconds since the run started.
    Built off-screen (no pyplot state), so concurrent plots do not share a figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        for run_id, points in curves.get(key, {}).items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=names.get(run_id, run_id[:8]), linewidth=1.5)
        ax.set_title(key)
        ax.set_xlabel(TIME_LABEL if by_time else STEP_LABEL)
        if not by_time:  # steps are whole numbers: no tick at step 2.5
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_png(
    curves: Curves,
    names: dict[str, str],
    keys: list[str],
    by_time: bool,
    width: int,
    height: int,
) -> bytes:
    """The figure of `build_figure` as PNG bytes, rendered with matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    buf = io.BytesIO()
    build_figure(curves, names, keys, by_time, width, height).savefig(buf, format="png")
    return buf.getvalue()
