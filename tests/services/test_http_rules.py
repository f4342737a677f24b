"""Every RPC in protos/ carries a google.api.http rule that Envoy's transcoder can serve.

Envoy checks `body` at start but finds a bad path variable only when a request arrives, so
this is what stands between a typo and a broken REST endpoint."""

from __future__ import annotations

import re
import site
import subprocess
import sys
from pathlib import Path

import pytest
from google.api import (
    annotations_pb2,
    http_pb2,
)
from google.protobuf import descriptor_pb2

from tests.conftest import ROOT

PROTOS = sorted((ROOT / "protos" / "neural" / "v1").glob("*.proto"))
VERBS = ("get", "put", "post", "delete", "patch")
# A path template (google/api/http.proto): literal segments, {field.path} or {field=pattern}.
SEGMENT = re.compile(r"^(?:[A-Za-z0-9_.\-~]+|\*|\*\*|\{[a-z_][a-z0-9_.]*(?:=[^{}]+)?\})$")
VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=[^{}]+)?\}")


@pytest.fixture(scope="module")
def descriptors(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("protos") / "all.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"-I{site.getsitepackages()[0]}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            *map(str, PROTOS),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _messages(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}
    for f in fds.file:
        for m in f.message_type:
            found[f".{f.package}.{m.name}"] = m
            for nested in m.nested_type:
                found[f".{f.package}.{m.name}.{nested.name}"] = nested
    return found


def _methods(
    fds: descriptor_pb2.FileDescriptorSet,
) -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    return [
        (f"{f.package}.{s.name}/{m.name}", m)
        for f in fds.file
        if f.package == "neural.v1"
        for s in f.service
        for m in s.method
    ]


def _resolve(messages: dict, type_name: str, path: str) -> bool:
    msg = messages[type_name]
    for i, part in enumerate(path.split(".")):
        field = next((f for f in msg.field if f.name == part), None)
        if field is None:
            return False
        if i < len(path.split(".")) - 1:
            if field.type != descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
                return False
            msg = messages[field.type_name]
        elif field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
            return False  # a path variable binds one value
    return True


def test_every_domain_has_its_proto() -> None:
    assert {p.stem for p in PROTOS} == {
        "common",
        "compiler",
        "trainer",
        "tracker",
        "deployer",
        "auth",
        "options",  # the method options the platform reads (required_role)
    }


def test_every_rpc_has_a_valid_http_rule(descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    messages = _messages(descriptors)
    methods = _methods(descriptors)
    assert len(methods) >= 40
    problems = []
    for name, m in methods:
        if not m.options.HasExtension(annotations_pb2.http):
            problems.append(f"{name}: no google.api.http rule")
            continue
        rule: http_pb2.HttpRule = m.options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in VERBS:
            problems.append(f"{name}: pattern {verb!r} is not one of {VERBS}")
            continue
        path = getattr(rule, verb)
        # A custom verb (`:cancel`) follows the last segment.
        template, custom = path.rsplit(":", 1) if ":" in path.rsplit("/", 1)[-1] else (path, "")
        if custom and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", custom):
            problems.append(f"{name}: bad custom verb {custom!r}")
        if not template.startswith("/v1/"):
            problems.append(f"{name}: path {path!r} is not under /v1/")
        for segment in template.strip("/").split("/"):
            if not SEGMENT.match(segment):
                problems.append(f"{name}: path {path!r} has a bad segment {segment!r}")
        for var in VARIABLE.findall(template):
            if not _resolve(messages, m.input_type, var):
                problems.append(f"{name}: path variable {{{var}}} is not a field of {m.input_type}")
        if verb in ("get", "delete"):
            if rule.body:
                problems.append(f"{name}: {verb} must not have a body")
        elif rule.body not in ("*", "") and not _resolve(messages, m.input_type, rule.body):
            problems.append(f"{name}: body {rule.body!r} is not a field of {m.input_type}")
        if rule.response_body and not _resolve(messages, m.output_type, rule.response_body):
            problems.append(f"{name}: response_body {rule.response_body!r} is not a field")
    assert not problems, "\n".join(problems)


def _all_messages(
    fds: descriptor_pb2.FileDescriptorSet,
) -> list[tuple[str, descriptor_pb2.DescriptorProto]]:
    """Every message of neural.v1, nested ones (map entries included) too."""
    found = []

    def walk(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        found.append((f"{prefix}.{m.name}", m))
        for nested in m.nested_type:
            walk(f"{prefix}.{m.name}", nested)

    for f in fds.file:
        if f.package == "neural.v1":
            for m in f.message_type:
                walk(f.package, m)
    return found


def _json_text_fields(fds: descriptor_pb2.FileDescriptorSet) -> list[str]:
    """Fields that would hand REST users JSON inside a string: `*_json` strings, or maps of
    strings so named (a map's value is its entry message's `value` field)."""
    found = []
    messages = dict(_all_messages(fds))
    for name, m in messages.items():
        for f in m.field:
            if not f.name.endswith("_json"):
                continue
            if f.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                found.append(f"{name}.{f.name}")
            elif f.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
                entry = messages.get(f.type_name.lstrip("."))
                if entry is not None and entry.options.map_entry:
                    value = next(v for v in entry.field if v.name == "value")
                    if value.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
                        found.append(f"{name}.{f.name}")
    return found


def test_no_field_carries_json_text(descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    assert _json_text_fields(descriptors) == []


def test_the_json_text_check_catches_a_string_and_a_map() -> None:
    proto = descriptor_pb2.FileDescriptorProto(name="x.proto", package="neural.v1")
    m = proto.message_type.add(name="M")
    m.field.add(name="ir_json", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    entry = m.nested_type.add(name="ShapesJsonEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    entry.field.add(name="value", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    m.field.add(
        name="shapes_json",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".neural.v1.M.ShapesJsonEntry",
        label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
    )
    fds = descriptor_pb2.FileDescriptorSet(file=[proto])
    assert _json_text_fields(fds) == ["neural.v1.M.ir_json", "neural.v1.M.shapes_json"]


def test_streams_and_files_are_plain_gets(descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    """Watch* streams reach REST users as newline-delimited JSON and HttpBody downloads as
    files: both are what `curl URL` reads, so both need a GET rule."""
    methods = _methods(descriptors)
    files = [n for n, m in methods if m.output_type == ".google.api.HttpBody"]
    assert {n.rsplit("/", 1)[1] for n in files} >= {"DownloadModelFile", "DownloadArtifactFile"}
    watches = [n for n, m in methods if n.rsplit("/", 1)[1].startswith("Watch")]
    assert len(watches) >= 4
    problems = []
    for name, m in methods:
        if name in files or name in watches:
            if not m.server_streaming:
                problems.append(f"{name}: not server-streaming")
            rule = m.options.Extensions[annotations_pb2.http]
            if rule.WhichOneof("pattern") != "get":
                problems.append(f"{name}: {rule.WhichOneof('pattern')!r}, not a GET rule")
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_typo(descriptors: descriptor_pb2.FileDescriptorSet) -> None:
    messages = _messages(descriptors)
    assert _resolve(messages, ".neural.v1.GetModelRequest", "id")
    assert not _resolve(messages, ".neural.v1.GetModelRequest", "model_id")
    assert VARIABLE.findall("/v1/runs/{run_id}/artifacts/{path=**}:download") == ["run_id", "path"]


def test_stub_package_is_importable() -> None:
    from neural.v1 import compiler_pb2_grpc

    assert hasattr(compiler_pb2_grpc, "CompilerServiceStub")


def test_descriptor_set_for_envoy_is_built_by_setup() -> None:
    path = ROOT / "gateway" / "neural_descriptor.pb"
    assert path.is_file(), "make setup writes gateway/neural_descriptor.pb"
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(path).read_bytes())
    names = {f.name for f in fds.file}
    assert "neural/v1/compiler.proto" in names and "google/api/http.proto" in names
