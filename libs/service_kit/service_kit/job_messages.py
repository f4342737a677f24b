"""Job records -> the shared protobuf messages (Job, JobEvent), for every service with jobs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from neural.v1 import common_pb2

from .jobs import JobRecord

JOB_STATES = {
    "queued": common_pb2.JOB_STATE_QUEUED,
    "running": common_pb2.JOB_STATE_RUNNING,
    "succeeded": common_pb2.JOB_STATE_SUCCEEDED,
    "failed": common_pb2.JOB_STATE_FAILED,
    "cancelled": common_pb2.JOB_STATE_CANCELLED,
}
JOB_STATE_NAMES = {v: k for k, v in JOB_STATES.items()}


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def timestamp_from_epoch(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def job(rec: JobRecord, deliveries: Iterable[common_pb2.WebhookDelivery] = ()) -> common_pb2.Job:
    return common_pb2.Job(
        id=rec.id,
        kind=rec.kind,
        state=JOB_STATES[rec.state],
        create_time=timestamp(rec.created_at),
        start_time=timestamp(rec.started_at),
        end_time=timestamp(rec.ended_at),
        error=rec.error,
        progress=rec.progress,
        result=rec.result,
        details=struct(rec.details),
        attempts=rec.attempts,
        owner=rec.owner,
        webhook_deliveries=list(deliveries),
    )


def event(
    rec: JobRecord,
    kind: str,
    message: str = "",
    deliveries: Iterable[common_pb2.WebhookDelivery] = (),
) -> common_pb2.JobEvent:
    """One Watch* event; a job's `details` may carry its latest epoch, step and metrics."""
    d = rec.details
    metrics = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
    return common_pb2.JobEvent(
        job_id=rec.id,
        state=JOB_STATES[rec.state],
        type=kind,
        message=message,
        progress=rec.progress,
        epoch=int(d.get("epoch", 0) or 0),
        step=int(d.get("step", 0) or 0),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        # a published event's own time; one read from the row: when it started or ended
        time=timestamp(rec.event_at or rec.ended_at or rec.started_at or rec.created_at),
        job=job(rec, deliveries),
    )
