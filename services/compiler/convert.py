"""Rows and records -> protobuf messages."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import struct_pb2
from neural.v1 import compiler_pb2
from service_kit import request_checks
from service_kit.job_messages import JOB_STATE_NAMES, JOB_STATES, event, job, struct, timestamp

__all__ = ["JOB_STATES", "JOB_STATE_NAMES", "event", "job", "struct", "timestamp"]

BACKEND_NAMES = {
    compiler_pb2.BACKEND_PYTORCH: "pytorch",
    compiler_pb2.BACKEND_TENSORFLOW: "tensorflow",
    compiler_pb2.BACKEND_ONNX: "onnx",
}
BACKEND_ENUMS = {v: k for k, v in BACKEND_NAMES.items()}
# A dimension not known before run time (JSON's null in `neural_dsl shapes`), as ArrayShape
# and ONNX write it.
UNKNOWN_DIM = -1


def model(row: Any) -> compiler_pb2.Model:
    return compiler_pb2.Model(
        id=row.id,
        name=row.name,
        backend=BACKEND_ENUMS[row.backend],
        network=row.network,
        owner=row.owner,
        source=row.source,
        ir=struct(json.loads(row.ir_json)),
        shapes=shapes(json.loads(row.shapes_json)),
        total_params=row.total_params,
        hparams=struct(json.loads(row.hparams_json)),
        artifact_name=row.artifact_name,
        artifact_size=row.artifact_size,
        artifact_sha256=row.artifact_sha256,
        create_time=timestamp(row.created_at),
    )


def _dims(shape: list[int | None]) -> list[int]:
    return [UNKNOWN_DIM if d is None else d for d in shape]


def _layer(doc: dict[str, Any]) -> compiler_pb2.LayerShape:
    return compiler_pb2.LayerShape(
        name=doc["name"],
        type=doc["type"],
        output_shape=_dims(doc["output_shape"]),
        params=doc["params"],  # None leaves the optional field absent: HPO decides it
        sublayers=[_layer(s) for s in doc.get("sublayers", ())],
    )


def shapes(doc: dict[str, Any]) -> compiler_pb2.ShapeReport:
    """`ShapeReport.to_json()` (as the registry stores it) -> the message."""
    return compiler_pb2.ShapeReport(
        network=doc["network"],
        inputs=[
            compiler_pb2.NamedShape(name=name, shape=_dims(shape))
            for name, shape in doc["inputs"].items()
        ],
        layers=[_layer(layer) for layer in doc["layers"]],
        output_shape=_dims(doc["output_shape"]),
        total_params=doc["total_params"],
    )


def hparams(message: struct_pb2.Struct) -> dict[str, Any]:
    return request_checks.struct_values(message, "hparams")
