"""What REST users read is JSON, not JSON inside strings: shape reports as messages, and
files as google.api.HttpBody streams that Envoy's transcoder sends as the HTTP body."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from google.protobuf import json_format
from neural_dsl import check
from service_kit.http_bodies import (
    OCTET_STREAM,
    content_disposition,
    content_type,
    http_bodies,
)

from services.compiler import convert

pytestmark = pytest.mark.unit

PROGRAM = """network T {
  input: (16, 8)
  layers:
    ResidualConnection { Conv1D(8, 3, padding="same") }
    Dense(HPO(choice(4, 8)))
}
"""


def test_a_shape_report_becomes_a_message_with_unknowns_marked() -> None:
    report = convert.shapes(check(PROGRAM).shapes["T"].to_json())
    assert report.network == "T"
    assert [(i.name, list(i.shape)) for i in report.inputs] == [("input", [-1, 16, 8])]
    residual, dense = report.layers
    assert residual.type == "ResidualConnection" and residual.params == 3 * 8 * 8 + 8
    assert [list(s.output_shape) for s in residual.sublayers] == [[-1, 16, 8]]
    # an HPO choice leaves the width -1 and the parameter counts absent, not zero
    assert list(dense.output_shape) == [-1, 16, -1]
    assert not dense.HasField("params") and not report.HasField("total_params")
    as_json = json_format.MessageToDict(report, preserving_proto_field_name=True)
    assert as_json["layers"][0]["sublayers"][0]["name"] == "residual_connection_1/conv1d_1"
    assert "params" not in as_json["layers"][1]


def test_a_known_parameter_count_survives_zero() -> None:
    doc = check("network N {\n input: (4)\n layers:\n  Flatten()\n  Dense(2)\n}").shapes["N"]
    report = convert.shapes(doc.to_json())
    flatten, dense = report.layers
    assert flatten.HasField("params") and flatten.params == 0  # known, and none
    assert dense.params == 4 * 2 + 2 and report.total_params == 10


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("model.onnx", "application/onnx"),
        ("model.py", "text/x-python"),
        ("plots/loss.png", "image/png"),
        ("data/train.csv", "text/csv"),
        ("data/train.csv.gz", OCTET_STREAM),  # the bytes as stored, not what they unpack to
        ("weights.bin", OCTET_STREAM),
        ("README", OCTET_STREAM),
    ],
)
def test_content_type_by_extension(name: str, expected: str) -> None:
    assert content_type(name) == expected


def test_content_disposition_names_the_file_whatever_its_name() -> None:
    assert content_disposition("model.onnx") == (
        "attachment; filename=\"model.onnx\"; filename*=UTF-8''model.onnx"
    )
    # only the last segment; a quote, a semicolon or non-ASCII cannot break the header
    header = content_disposition('plots/lo"ss; ü.png')
    assert header == (
        "attachment; filename=\"lo_ss___.png\"; filename*=UTF-8''lo%22ss%3B%20%C3%BC.png"
    )
    assert header.isascii()


def _bodies(path: Path, name: str, chunk: int) -> list:
    async def collect() -> list:
        return [b async for b in http_bodies(path, name, chunk)]

    return asyncio.run(collect())


def test_a_file_streams_in_typed_chunks(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(bytes(range(256)) * 10)
    bodies = _bodies(path, "model.onnx", 1000)
    assert [len(b.data) for b in bodies] == [1000, 1000, 560]
    assert b"".join(b.data for b in bodies) == path.read_bytes()
    assert {b.content_type for b in bodies} == {"application/onnx"}


def test_an_empty_file_is_one_empty_body(tmp_path: Path) -> None:
    # the transcoder takes the Content-Type from the first message: there must be one
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    (body,) = _bodies(path, "empty.txt", 1000)
    assert body.data == b"" and body.content_type == "text/plain"
