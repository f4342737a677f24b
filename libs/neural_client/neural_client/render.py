"""What the CLI prints: diagnostics with their source line, Rich tables, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from neural.v1 import auth_pb2, common_pb2, deployer_pb2, tracker_pb2
from rich.table import Table


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def dumps(value: Any) -> str:
    """JSON for scripts: a message, a list of messages, or plain data."""
    if isinstance(value, Message):
        value = to_dict(value)
    elif isinstance(value, list | tuple):
        value = [to_dict(v) if isinstance(v, Message) else v for v in value]
    return json.dumps(value, indent=2, sort_keys=True)


def diagnostic(filename: str, source: str, d: common_pb2.Diagnostic) -> str:
    """`FILE:LINE:COL: SEVERITY: MESSAGE`, then the source line with a caret under the column,
    as `python -m neural_dsl check` prints it."""
    text = f"{filename}:{d.line}:{d.column}: {d.severity or 'error'}: {d.message}"
    lines = source.splitlines()
    if 1 <= d.line <= len(lines):
        line = lines[d.line - 1].replace("\t", " ")
        text += f"\n    {line}\n    {' ' * max(d.column - 1, 0)}^"
    return text


def when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return datetime.fromtimestamp(ts.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def enum_name(full: str, prefix: str) -> str:
    return full.removeprefix(prefix)


def job_state(state: int) -> str:
    return enum_name(common_pb2.JobState.Name(state), "JOB_STATE_")


def run_status(status: int) -> str:
    return enum_name(tracker_pb2.RunStatus.Name(status), "RUN_STATUS_")


def deployment_state(state: int) -> str:
    return enum_name(deployer_pb2.DeploymentState.Name(state), "DEPLOYMENT_STATE_")


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    return table


def jobs_table(jobs: Sequence[common_pb2.Job]) -> Table:
    rows = [
        (j.id, j.kind, job_state(j.state), f"{j.progress:.0%}", when(j.create_time), j.error)
        for j in jobs
    ]
    return _table("Jobs", ("id", "kind", "state", "progress", "created", "error"), rows)


def job_table(job: common_pb2.Job) -> Table:
    rows = [
        ("id", job.id),
        ("kind", job.kind),
        ("state", job_state(job.state)),
        ("progress", f"{job.progress:.0%}"),
        ("created", when(job.create_time)),
        ("started", when(job.start_time)),
        ("ended", when(job.end_time)),
        ("attempts", job.attempts),
    ]
    if job.error:
        rows.append(("error", job.error))
    for key, value in sorted(to_dict(job.details).items()) if job.HasField("details") else []:
        rows.append((key, value if not isinstance(value, dict | list) else json.dumps(value)))
    return _table(f"Job {job.id}", ("field", "value"), rows)


def experiments_table(experiments: Sequence[tracker_pb2.Experiment]) -> Table:
    rows = [(e.id, e.name, e.run_count, e.owner, when(e.create_time)) for e in experiments]
    return _table("Experiments", ("id", "name", "runs", "owner", "created"), rows)


def metrics_text(metrics: Iterable[tracker_pb2.Metric], keys: Sequence[str] = ()) -> str:
    chosen = [m for m in metrics if not keys or m.key in keys]
    return "  ".join(f"{m.key}={m.value:.4g}" for m in sorted(chosen, key=lambda m: m.key))


RUN_LIST_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def runs_table(runs: Sequence[tracker_pb2.Run]) -> Table:
    rows = [
        (
            r.id,
            r.name,
            run_status(r.status),
            when(r.start_time),
            metrics_text(r.latest_metrics, RUN_LIST_METRICS),
        )
        for r in runs
    ]
    return _table("Runs", ("id", "name", "status", "started", "latest metrics"), rows)


def run_table(run: tracker_pb2.Run) -> Table:
    rows: list[tuple[str, Any]] = [
        ("id", run.id),
        ("name", run.name),
        ("experiment", run.experiment_id),
        ("status", run_status(run.status)),
        ("started", when(run.start_time)),
        ("ended", when(run.end_time)),
        ("job", run.job_id),
    ]
    rows += [(f"param {k}", v) for k, v in sorted(run.params.items())]
    rows += [(f"tag {k}", v) for k, v in sorted(run.tags.items())]
    rows += [(f"metric {m.key}", f"{m.value:.6g} (step {m.step})") for m in run.latest_metrics]
    return _table(f"Run {run.id}", ("field", "value"), rows)


def compare_table(answer: tracker_pb2.CompareRunsResponse) -> Table:
    keys = sorted({k for r in answer.runs for k in r.metrics})
    params = list(answer.differing_params)
    columns = ["run", "name", "status", *params, *keys]
    rows = []
    for r in answer.runs:
        cells = [r.run_id, r.run_name, run_status(r.status)]
        cells += [r.params.get(p, "") for p in params]
        for key in keys:
            summary = r.metrics.get(key)
            best = answer.best_runs.get(key)
            mark = " *" if best is not None and best.run_id == r.run_id else ""
            cells.append(f"{summary.last:.4g}{mark}" if summary is not None else "")
        rows.append(cells)
    return _table("Runs compared (last value; * best)", columns, rows)


def deployment_table(d: deployer_pb2.Deployment) -> Table:
    rows = [
        ("id", d.id),
        ("name", d.name),
        ("state", deployment_state(d.state)),
        ("replicas", f"{d.ready_replicas}/{d.replicas}"),
        ("model version", d.model_version),
        ("endpoint", d.endpoint),
    ]
    if d.error:
        rows.append(("error", d.error))
    return _table(f"Deployment {d.name}", ("field", "value"), rows)


def deployments_table(found: Sequence[deployer_pb2.Deployment]) -> Table:
    rows = [
        (
            d.name,
            d.id,
            deployment_state(d.state),
            f"{d.ready_replicas}/{d.replicas}",
            d.model_version,
            d.error,
        )
        for d in found
    ]
    columns = ("name", "id", "state", "ready", "model version", "error")
    return _table("Deployments", columns, rows)


def keys_table(keys: Sequence[auth_pb2.ApiKey]) -> Table:
    rows = [
        (
            k.id,
            k.name,
            k.prefix,
            enum_name(auth_pb2.Role.Name(k.role), "ROLE_").lower(),
            when(k.create_time),
            when(k.last_used_time),
            "yes" if k.revoked else "",
        )
        for k in keys
    ]
    columns = ("id", "name", "prefix", "role", "created", "last used", "revoked")
    return _table("API keys", columns, rows)


def predictions_table(outputs: Any) -> Table:
    """One row per example: the class with the highest score, and that score."""
    rows = []
    for i, row in enumerate(outputs.reshape(len(outputs), -1)):
        best = int(row.argmax())
        rows.append((i, best, f"{float(row[best]):.4f}"))
    return _table("Predictions", ("row", "class", "score"), rows)
