"""Rows and records -> protobuf messages."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from neural.v1 import common_pb2, compiler_pb2
from service_kit.jobs import JobRecord

BACKEND_NAMES = {
    compiler_pb2.BACKEND_PYTORCH: "pytorch",
    compiler_pb2.BACKEND_TENSORFLOW: "tensorflow",
    compiler_pb2.BACKEND_ONNX: "onnx",
}
BACKEND_ENUMS = {v: k for k, v in BACKEND_NAMES.items()}

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


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def model(row: Any) -> compiler_pb2.Model:
    return compiler_pb2.Model(
        id=row.id,
        name=row.name,
        backend=BACKEND_ENUMS[row.backend],
        network=row.network,
        owner=row.owner,
        source=row.source,
        ir_json=row.ir_json,
        shapes_json=row.shapes_json,
        total_params=row.total_params,
        hparams=struct(json.loads(row.hparams_json)),
        artifact_name=row.artifact_name,
        artifact_size=row.artifact_size,
        artifact_sha256=row.artifact_sha256,
        create_time=timestamp(row.created_at),
    )


def job(rec: JobRecord) -> common_pb2.Job:
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
    )


def hparams(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)
