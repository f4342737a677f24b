"""Following a job live: a Rich progress bar (epoch, batch, loss, accuracy, ETA) and a line
per finished epoch, so a log or a pipe shows the same history as the terminal."""

from __future__ import annotations

import re
from collections.abc import Iterable

from neural.v1 import common_pb2
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .client import TERMINAL
from .render import job_state

EPOCH = re.compile(r"^epoch (\d+)/(\d+)")
SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")


def metrics_line(metrics: dict[str, float]) -> str:
    keys = [k for k in SHOWN if k in metrics] + sorted(k for k in metrics if k not in SHOWN)
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)


def describe(event: common_pb2.JobEvent, epochs: int | None) -> str:
    text = f"epoch {event.epoch}/{epochs}" if epochs else f"epoch {event.epoch}"
    return text + (f" batch {event.step}" if event.step else "")


def progress_bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,  # a pipe or a log gets the epoch lines alone
    )


def follow(events: Iterable[common_pb2.JobEvent], console: Console) -> common_pb2.Job | None:
    """Shows the events until the job ends; its final state, or None if the stream ended
    first. Ctrl-C (KeyboardInterrupt) passes through to the caller, which decides."""
    epochs: int | None = None
    last: common_pb2.Job | None = None
    with progress_bar(console) as progress:
        task = progress.add_task("queued", total=1.0, metrics="")
        for event in events:
            last = event.job if event.HasField("job") else last
            match = EPOCH.match(event.message)
            if match:
                epochs = int(match.group(2))
            shown = metrics_line(dict(event.metrics))
            progress.update(
                task,
                completed=event.progress,
                description=describe(event, epochs) if event.epoch else event.type or "running",
                metrics=shown,
            )
            if match:
                progress.console.print(f"{match.group(0)}  {shown}".rstrip(), soft_wrap=True)
            elif event.type and event.type != "progress":
                same = event.message in ("", event.type)
                line = event.type if same else f"{event.type}: {event.message}"
                progress.console.print(line, soft_wrap=True, markup=False)
            progress.console.file.flush()  # a pipe or a log sees each line as it happens
            if event.state in TERMINAL:
                if event.state == common_pb2.JOB_STATE_SUCCEEDED:
                    progress.update(task, completed=1.0)
                break
    return last


def summary(job: common_pb2.Job) -> str:
    """`job ID SUCCEEDED (run RUN)`, or with the error."""
    text = f"job {job.id} {job_state(job.state)}"
    run_id = job.details.fields["run_id"].string_value if "run_id" in job.details.fields else ""
    if run_id:
        text += f" (run {run_id})"
    if job.error:
        text += f": {job.error}"
    return text
