"""The compile step: a program and a backend in, one artifact out. Shared by Compile (ONNX
through `exports.py`) and the compile worker. ONNX is lowered straight from the IR
(`neural_dsl.backends.export_onnx`: no torch, thread-safe).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from neural_dsl import Limits, parse
from neural_dsl.backends import compile_network, prepare
from neural_dsl.ir import Network, Program, program_to_json
from service_kit.errors import FieldViolation, InvalidArgument

BACKENDS = ("pytorch", "tensorflow", "onnx")


@dataclass(frozen=True)
class CompileInput:
    owner: str
    source: str
    backend: str
    hparams: dict[str, Any]
    network: str
    name: str

    def cache_key(self) -> str:
        blob = json.dumps(
            [self.owner, self.source, self.backend, self.network, sorted(self.hparams.items())],
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    name: str
    data: bytes
    ir_json: str
    shapes_json: str
    total_params: int
    network: str
    warnings: list[str]


def compile_artifact(req: CompileInput, limits: Limits) -> Artifact:
    """The CPU-bound part (run in a thread or a worker).

    Raises DSLError for a bad program (the parameter limit included) and InvalidArgument for
    a wrong network name or an ONNX file over `limits.max_onnx_bytes`."""
    network = _network(req, limits)
    result = compile_network(network, req.backend, req.hparams or None, limits)
    if result.onnx is not None:
        name, data = "model.onnx", result.onnx
        if len(data) > limits.max_onnx_bytes:
            raise InvalidArgument(
                f"the ONNX file is {len(data):,} bytes, over the limit of "
                f"{limits.max_onnx_bytes:,} (NEURAL_MAX_ONNX_BYTES)",
                [FieldViolation("source", "the network's ONNX file is too large")],
            )
    else:
        name, data = "model.py", (result.source or "").encode()
    return Artifact(
        name,
        data,
        json.dumps(program_to_json(Program((result.network,)))),
        json.dumps(result.shapes.to_json()),
        result.shapes.total_params or 0,
        network.name,
        result.warnings,
    )


def check_request(req: CompileInput, limits: Limits) -> None:
    """The cheap checks of a compile (parse, network, shapes, the parameter limit) without
    generating code: SubmitCompile refuses at submit what the worker would refuse."""
    prepare(_network(req, limits), req.backend, req.hparams or None, limits)


def _network(req: CompileInput, limits: Limits) -> Network:
    program = parse(req.source, limits)
    names = [n.name for n in program.networks]
    if req.network:
        if req.network not in names:
            raise InvalidArgument(
                f"no network {req.network!r} in the program (has: {', '.join(names) or 'none'})",
                [FieldViolation("network", "unknown network")],
            )
        return program.get(req.network)
    if len(names) != 1:
        raise InvalidArgument(
            f"the program declares {len(names)} networks: name one",
            [FieldViolation("network", "required when there are several")],
        )
    return program.network
