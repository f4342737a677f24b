"""The Open Inference Protocol's stubs: taken from KServe's generated module without running
it (scripts/oip_stubs.py), and what `make setup` generated from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from inference import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def _script() -> Any:  # scripts/ is no package: load the file
    spec = importlib.util.spec_from_file_location("oip_stubs", ROOT / "scripts" / "oip_stubs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_descriptor_is_read_from_the_syntax_tree_never_run() -> None:
    oip = _script()
    proto = descriptor_pb2.FileDescriptorProto(name="grpc_predict_v2.proto", package="inference")
    proto.message_type.add(name="ServerLiveRequest")
    source = (
        "raise SystemExit('executed!')\n"
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(\n"
        f"    {proto.SerializeToString()!r}\n)\n"
    )
    found = oip.serialized_descriptor(source)
    assert descriptor_pb2.FileDescriptorProto.FromString(found) == proto
    files = oip.descriptor_set(found)
    assert [f.name for f in files.file] == ["inference/grpc_predict_v2.proto"]
    with pytest.raises(SystemExit, match="no AddSerializedFile"):
        oip.serialized_descriptor("x = 1\n")
    proto.package = "other"
    with pytest.raises(SystemExit, match=r"expected grpc_predict_v2\.proto"):
        oip.descriptor_set(proto.SerializeToString())


def test_the_generated_stubs_are_the_protocol() -> None:
    file = grpc_predict_v2_pb2.DESCRIPTOR
    assert (file.name, file.package) == ("inference/grpc_predict_v2.proto", "inference")
    service = file.services_by_name["GRPCInferenceService"]
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    ]
    assert hasattr(grpc_predict_v2_pb2_grpc, "GRPCInferenceServiceStub")
    infer = file.message_types_by_name["ModelInferRequest"]
    assert "raw_input_contents" in infer.fields_by_name
