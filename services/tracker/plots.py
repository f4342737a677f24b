"""Metric curves as a PNG: one panel per metric key, one line per run."""

from __future__ import annotations

import io


def plot_png(
    curves: dict[str, dict[str, list[tuple[float, float]]]],
    names: dict[str, str],
    keys: list[str],
    x_label: str,
    width: int,
    height: int,
) -> bytes:
    """curves[key][run_id] = [(x, y), ...]. Rendered off-screen with matplotlib's Agg."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        for run_id, points in curves.get(key, {}).items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=names.get(run_id, run_id[:8]), linewidth=1.5)
        ax.set_title(key)
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
