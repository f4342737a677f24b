"""Models to serve and replica processes serving them, for the deployer's tests.

`onnx_models` (session scope; `compiled_models` and `built_models` are its halves): small ONNX
files, compiled by the project's own compiler from DSL programs (`dense`: (8,) -> 4 through Dense
layers; `conv`: (8, 8, 1) -> 3 through Conv2D), and built with the `onnx` helper API where the
compiler cannot make what a test needs (`multi`: two inputs of two datatypes, three outputs, one
FP16; `fixed`: a fixed batch of 2; `slow`: as slow as asked; `broken`: not a model).
`replica(...)` runs a replica process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]

DENSE = """network Dense8 {
  input: (8,)
  layers:
    Dense(16, activation="relu")
    Dense(4, activation="softmax")
  loss: "categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
}
"""

CONV = """network SmallConv {
  input: (8, 8, 1)
  layers:
    Conv2D(4, (3,3), activation="relu")
    MaxPooling2D((2,2))
    Flatten()
    Dense(3, activation="softmax")
  loss: "categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
}
"""


def _multi(path: Path) -> None:
    """a: FP32 [N, 4], b: INT64 [N, 2] -> doubled: FP32 [N, 4], squared: INT64 [N, 2],
    half: FP16 [N, 4] (FP16 has no typed contents field: it is always answered raw)."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "a"], ["doubled"]),
            helper.make_node("Mul", ["b", "b"], ["squared"]),
            helper.make_node("Cast", ["a"], ["half"], to=TensorProto.FLOAT16),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.INT64, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("squared", TensorProto.INT64, ["N", 2]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 4]),
        ],
    )
    _save(graph, path)


def _fixed(path: Path) -> None:
    """x: FP32 [2, 3] -> y = x * x: no free batch axis, so never batched."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    _save(graph, path)


def _slow(path: Path) -> None:
    """x: FP32 [1], trips: INT64 scalar -> y = x + trips, one Loop iteration per unit (about a
    microsecond each): a run as long as a test needs, e.g. to be in flight during SIGTERM."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)],
        "slow",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("trips", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def compiled_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`dense` and `conv`, compiled by `python -m neural_dsl compile --backend onnx`."""
    folder = tmp_path_factory.mktemp("compiled-models")
    compiles = {}
    for name, program in (("dense", DENSE), ("conv", CONV)):
        source = folder / f"{name}.neural"
        source.write_text(program)
        compiles[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neural_dsl",
                "compile",
                str(source),
                "--backend",
                "onnx",
                "-o",
                str(folder / f"{name}.onnx"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, proc in compiles.items():
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"compiling {name}: {out}"
    return {name: folder / f"{name}.onnx" for name in compiles}


@pytest.fixture(scope="session")
def built_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`multi`, `fixed`, `slow` and `broken`, written with the onnx helper API (no compiler run)."""
    folder = tmp_path_factory.mktemp("built-models")
    _multi(folder / "multi.onnx")
    _fixed(folder / "fixed.onnx")
    _slow(folder / "slow.onnx")
    (folder / "broken.onnx").write_bytes(b"this is not an ONNX model")
    return {name: folder / f"{name}.onnx" for name in ("multi", "fixed", "slow", "broken")}


@pytest.fixture(scope="session")
def onnx_models(compiled_models: dict[str, Path], built_models: dict[str, Path]) -> dict[str, Path]:
    return {**compiled_models, **built_models}


@dataclass
class Replica:
    proc: subprocess.Popen
    port: int
    stderr: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _first_line(proc: subprocess.Popen, timeout: float) -> str:
    """The process's first stdout line, or "" when it ends (or `timeout` passes) first."""
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return line[0] if line else ""


def _environment() -> dict[str, str]:
    """The test's environment without the authz key: a replica checks tokens only when a test
    gives it one."""
    return {k: v for k, v in os.environ.items() if k != "NEURAL_AUTHZ_PUBLIC_KEY_FILE"}


@contextmanager
def replica(
    model: Path,
    log_dir: Path,
    *args: str,
    name: str = "m",
    version: str = "v1",
    env: dict[str, str] | None = None,
) -> Iterator[Replica]:
    """A replica process serving `model`, stopped (SIGTERM) at the end."""
    stderr = log_dir / f"replica-{name}-{version}-{os.urandom(3).hex()}.log"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.deployer.replica",
                "--model",
                str(model),
                "--model-name",
                name,
                "--model-version",
                version,
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={**_environment(), **(env or {})},
        )
    try:
        line = _first_line(proc, 60)
        if not line.startswith("PORT "):
            proc.kill()
            proc.wait()
            raise AssertionError(f"replica did not start: {line!r}\n{stderr.read_text()[-3000:]}")
        yield Replica(proc, int(line.split()[1]), stderr)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
