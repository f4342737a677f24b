"""Plots read well: steps get whole-number ticks, time is seconds since the run started."""

from __future__ import annotations

import datetime as dt

from services.tracker.plots import TIME_LABEL, build_figure, plot_png, seconds_since_start


def test_step_axes_tick_only_whole_steps() -> None:
    curves = {"loss": {"r1": [(1, 0.9), (2, 0.5), (3, 0.4)]}}  # 3 steps: matplotlib says 1.5
    fig = build_figure(curves, {"r1": "run one"}, ["loss"], False, 600, 400)
    fig.canvas.draw()  # the locator picks ticks when drawn
    (ax,) = fig.axes
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_xlabel() == "step"
    assert [line.get_label() for line in ax.lines] == ["run one"]


def test_time_axes_count_seconds_from_the_run_start() -> None:
    start = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    ms = int(start.timestamp() * 1000)
    assert seconds_since_start(ms + 2500, start) == 2.5
    naive = start.replace(tzinfo=None)  # SQLite hands datetimes back without a zone: UTC
    assert seconds_since_start(ms + 1000, naive) == 1.0
    curves = {"loss": {"r1": [(0.5, 0.9), (2.5, 0.5)]}}
    fig = build_figure(curves, {}, ["loss"], True, 600, 400)
    (ax,) = fig.axes
    assert ax.get_xlabel() == TIME_LABEL
    assert list(ax.lines[0].get_xdata()) == [0.5, 2.5]


def test_the_png_is_a_png() -> None:
    png = plot_png({"loss": {"r1": [(1, 0.5)]}}, {}, ["loss", "acc"], False, 300, 200)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
