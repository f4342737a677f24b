"""`neural train` and `neural jobs list|get|cancel|watch`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from neural.v1 import common_pb2

from .app import JsonOption, SourceFile, app, client, console, emit_json, jobs_app, read_source
from .client import DATASETS, JOB_KINDS, TERMINAL, TRAINING_BACKENDS, Client
from .cmd_compile import explain_invalid
from .errors import NeuralError
from .render import job_table, jobs_table
from .watch import follow, summary

EXIT_INTERRUPTED = 130  # what a shell reports for a command stopped by Ctrl-C

KindOption = Annotated[str, typer.Option("--kind", help=f"One of {', '.join(JOB_KINDS)}.")]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="On Ctrl-C, cancel the job without asking.")
]
NoInputOption = Annotated[
    bool,
    typer.Option("--no-input", help="Never ask: on Ctrl-C, leave the job running and stop."),
]


def on_interrupt(api: Client, job_id: str, kind: str, yes: bool, no_input: bool) -> None:
    """Ctrl-C while watching: cancel the job (asked, or --yes), or leave it running."""
    console.print()
    if yes:
        cancel = True
    elif no_input or not sys.stdin.isatty():
        cancel = False
    else:
        try:
            cancel = typer.confirm(f"Cancel job {job_id}?", default=False)
        except (KeyboardInterrupt, typer.Abort):
            cancel = False
    if cancel:
        job = api.cancel_job(job_id, kind)
        print(f"job {job.id} cancelled", file=sys.stderr)
    else:
        print(
            f"job {job_id} is still running: `neural jobs watch {job_id}` follows it, "
            f"`neural jobs cancel {job_id}` stops it",
            file=sys.stderr,
        )
    raise typer.Exit(EXIT_INTERRUPTED)


def watch_job(api: Client, job_id: str, kind: str, yes: bool, no_input: bool) -> None:
    """Follows the job to its end; exit 1 unless it succeeded."""
    try:
        job = follow(api.watch(job_id, kind), console)
    except KeyboardInterrupt:
        on_interrupt(api, job_id, kind, yes, no_input)
        return
    if job is None:
        job = api.get_job(job_id, kind)
    print(summary(job), flush=True)
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def train(
    file: SourceFile,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help=f"One of {', '.join(DATASETS)}.")
    ] = "digits",
    epochs: Annotated[int | None, typer.Option(min=1, help="Overrides the program's.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    experiment: Annotated[str, typer.Option("--experiment", "-e")] = "",
    backend: Annotated[
        str | None, typer.Option(help=f"One of {', '.join(TRAINING_BACKENDS)}.")
    ] = None,
    watch: Annotated[bool, typer.Option("--watch/--detach", help="Follow it live.")] = False,
    yes: YesOption = False,
    no_input: NoInputOption = False,
    json: JsonOption = False,
) -> None:
    """Train a program on a built-in dataset; --watch shows a live progress bar."""
    if dataset not in DATASETS:
        raise typer.BadParameter(f"one of {', '.join(DATASETS)}", param_hint="--dataset")
    if backend is not None and backend not in TRAINING_BACKENDS:
        raise typer.BadParameter(f"one of {', '.join(TRAINING_BACKENDS)}", param_hint="--backend")
    source = read_source(file)
    api = client()
    try:
        job = api.submit_training(
            source,
            dataset=dataset,
            epochs=epochs,
            batch_size=batch_size,
            experiment=experiment,
            backend=backend,
        )
    except NeuralError as exc:
        explain_invalid(api, file, source, exc)
        raise
    if json and not watch:
        emit_json(job)
        return
    print(f"job {job.id} submitted", file=sys.stderr if json else sys.stdout)
    if watch:
        watch_job(api, job.id, "training", yes, no_input)


@jobs_app.command("list")
def jobs_list(
    kind: KindOption = "training",
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    json: JsonOption = False,
) -> None:
    """Recent jobs, newest first."""
    jobs = client().list_jobs(kind, limit)
    emit_json(jobs) if json else console.print(jobs_table(jobs))


@jobs_app.command("get")
def jobs_get(job_id: str, kind: KindOption = "training", json: JsonOption = False) -> None:
    """One job: its state, progress, error and details (the run it trains)."""
    job = client().get_job(job_id, kind)
    emit_json(job) if json else console.print(job_table(job))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, kind: KindOption = "training", json: JsonOption = False) -> None:
    """Cancel a queued or running job."""
    job = client().cancel_job(job_id, kind)
    if json:
        emit_json(job)
    elif job.state in TERMINAL:
        print(summary(job))
    else:  # the worker stops it at its next check
        print(f"cancellation requested: {summary(job)}")


@jobs_app.command("watch")
def jobs_watch(
    job_id: str,
    kind: KindOption = "training",
    yes: YesOption = False,
    no_input: NoInputOption = False,
) -> None:
    """Follow a job live until it ends; Ctrl-C asks whether to cancel it."""
    watch_job(client(), job_id, kind, yes, no_input)
