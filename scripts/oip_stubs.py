"""The Open Inference Protocol's Python stubs (package `inference`), from a maintained package.

KServe's wheel ships no .proto, but its generated `kserve/protocol/grpc/grpc_predict_v2_pb2.py`
carries the protocol's serialized FileDescriptorProto. This script takes those bytes out of the
file's syntax tree (the file is parsed, never run: it would need KServe's protobuf version),
writes them as a FileDescriptorSet and runs protoc on it, so the stubs match the grpcio-tools
and protobuf versions of this environment. The descriptor's file is renamed
`inference/grpc_predict_v2.proto` (its package is `inference`), so that protoc writes the
modules into the `inference` package and the gRPC module imports `from inference import ...`.

    python scripts/oip_stubs.py --cache .venv/cache --out libs/neural_api
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

KSERVE = "kserve==0.21.0"
MEMBER = "kserve/protocol/grpc/grpc_predict_v2_pb2.py"
PACKAGE = "inference"
SOURCE_NAME = "grpc_predict_v2.proto"  # the file's name inside KServe's descriptor


def wheel(cache: Path) -> Path:
    """KServe's wheel in `cache`, downloaded (without its dependencies) when not there yet."""
    name, version = KSERVE.split("==")
    pattern = f"{name}-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", KSERVE, "-d", cache],
            check=True,
        )
        found = sorted(cache.glob(pattern))
    if not found:
        raise SystemExit(f"pip download {KSERVE} left no {pattern} in {cache}")
    return found[-1]


def serialized_descriptor(source: str) -> bytes:
    """The bytes literal passed to `AddSerializedFile(...)` in a generated _pb2 module."""
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise SystemExit(f"{MEMBER}: no AddSerializedFile(b'...') call in it")


def descriptor_set(serialized: bytes) -> descriptor_pb2.FileDescriptorSet:
    proto = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    if proto.name != SOURCE_NAME or proto.package != PACKAGE:
        raise SystemExit(
            f"{MEMBER}: describes {proto.name} (package {proto.package}), expected "
            f"{SOURCE_NAME} (package {PACKAGE})"
        )
    if proto.dependency:
        raise SystemExit(
            f"{MEMBER}: imports {list(proto.dependency)}; only a standalone file is expected"
        )
    proto.name = f"{PACKAGE}/{SOURCE_NAME}"
    return descriptor_pb2.FileDescriptorSet(file=[proto])


def generate(cache: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel(cache)) as archive:
        source = archive.read(MEMBER).decode()
    files = descriptor_set(serialized_descriptor(source))
    (out / PACKAGE).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        set_file = Path(tmp) / "oip.pb"
        set_file.write_bytes(files.SerializeToString())
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--descriptor_set_in={set_file}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                f"--pyi_out={out}",
                files.file[0].name,
            ],
            check=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="where KServe's wheel is kept")
    parser.add_argument("--out", type=Path, required=True, help="the folder holding `inference/`")
    args = parser.parse_args()
    generate(args.cache, args.out)


if __name__ == "__main__":
    main()
