"""`neural experiments`, `neural runs list|get|compare|metrics` and `neural plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import JsonOption, app, client, console, emit_json, fail, runs_app
from .render import compare_table, experiments_table, run_table, runs_table, to_dict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@app.command()
def experiments(
    name: Annotated[str, typer.Option(help="Only the experiment with this name.")] = "",
    json: JsonOption = False,
) -> None:
    """The experiments and how many runs each has."""
    found = client().experiments(name)
    emit_json(found) if json else console.print(experiments_table(found))


@runs_app.command("list")
def runs_list(
    experiment: Annotated[str | None, typer.Option("--experiment", "-e")] = None,
    filter: Annotated[str, typer.Option(help='e.g. "metrics.val_accuracy > 0.9".')] = "",
    order_by: Annotated[list[str] | None, typer.Option(help='e.g. "metrics.loss ASC".')] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json: JsonOption = False,
) -> None:
    """Runs, newest first (or as --order-by says), with their latest metrics."""
    runs = client().runs(experiment, filter, tuple(order_by or ()), limit)
    emit_json(runs) if json else console.print(runs_table(runs))


@runs_app.command("get")
def runs_get(run_id: str, json: JsonOption = False) -> None:
    """One run: status, params, tags and latest metrics."""
    run = client().get_run(run_id)
    emit_json(run) if json else console.print(run_table(run))


@runs_app.command("compare")
def runs_compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more runs.")],
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m")] = None,
    json: JsonOption = False,
) -> None:
    """Runs side by side: the params that differ and each metric's last value (* best)."""
    answer = client().compare_runs(run_ids, metric or [])
    emit_json(answer) if json else console.print(compare_table(answer))


@runs_app.command("metrics")
def runs_metrics(
    run_id: str,
    metric: Annotated[str, typer.Option("--metric", "-m")] = "val_accuracy",
    json: JsonOption = False,
) -> None:
    """A metric's history: one value per step."""
    points = client().metric_history(run_id, metric)
    if json:
        emit_json([{k: v for k, v in to_dict(p).items() if k != "key"} for p in points])
        return
    for p in points:
        print(f"{p.step}\t{p.value:.6g}")


@app.command()
def plot(
    run_ids: Annotated[list[str], typer.Argument(help="The runs to draw, up to 20.")],
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="One panel each.")
    ] = None,
    x_axis: Annotated[str, typer.Option(help="step or time.")] = "step",
    output: Annotated[Path, typer.Option("--output", "-o")] = Path("curves.png"),
) -> None:
    """The runs' metric curves as a PNG (drawn by the tracker)."""
    if x_axis not in ("step", "time"):
        raise typer.BadParameter("step or time", param_hint="--x-axis")
    png = client().plot(run_ids, metric or ["val_accuracy"], x_axis)
    if not png.startswith(PNG_MAGIC):
        fail("the tracker's plot is not a PNG image")
    output.write_bytes(png)
    print(f"{output} ({len(png)} bytes)")
