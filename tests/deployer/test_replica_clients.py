"""The V2 clients users already have, unchanged, against a live replica: NVIDIA's tritonclient
and KServe's `InferenceGRPCClient`. Live/ready, model readiness and metadata, and inference equal
to in-process onnxruntime on the same inputs, exactly; a wrong datatype is INVALID_ARGUMENT
naming the input.

Both need protobuf < 7, so they run from `.venv-clients` (made by `make setup`) as subprocesses
(tests/deployer/clients/*_check.py), as any outside client would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from .conftest import ROOT, replica

pytestmark = pytest.mark.e2e

CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
CHECKS = {
    "tritonclient": Path(__file__).parent / "clients" / "triton_check.py",
    "kserve": Path(__file__).parent / "clients" / "kserve_check.py",
}


def session(path: Path) -> ort.InferenceSession:
    """In-process onnxruntime, set up as the replica sets up its session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_check(
    address: str,
    model: str,
    feeds: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    folder: Path,
    outputs: list[str] | None = None,
    headers: dict[str, str] | None = None,
    client: str = "tritonclient",
) -> dict:
    """Run `client`'s check script against `address`; its JSON summary."""
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: run make setup")
    np.savez(folder / "inputs.npz", **feeds)
    np.savez(folder / "expected.npz", **expected)
    args = ["--url", address, "--model", model, "--version", "v1"]
    args += ["--inputs", str(folder / "inputs.npz"), "--expected", str(folder / "expected.npz")]
    args += [arg for k, v in (headers or {}).items() for arg in ("--header", f"{k}={v}")]
    proc = subprocess.run(
        [str(CLIENTS_PYTHON), str(CHECKS[client]), *args, "--outputs", *(outputs or [])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("client", sorted(CHECKS))
def test_the_dense_model_with_batching(
    client: str, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    dense = session(onnx_models["dense"])
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
    names = [o.name for o in dense.get_outputs()]
    expected = dict(zip(names, dense.run(None, {"input": x}), strict=True))
    batching = ("--max-batch-size", "8", "--max-batch-delay-us", "500")
    with replica(onnx_models["dense"], tmp_path, *batching, name="digits") as r:
        answer = run_check(r.address, "digits", {"input": x}, expected, tmp_path, client=client)
    meta = answer["metadata"]
    assert meta["name"] == "digits" and meta["versions"] == ["v1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "8"]}]
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": ["-1", "4"]}]


@pytest.mark.parametrize("client", sorted(CHECKS))
def test_two_inputs_and_requested_outputs(
    client: str, onnx_models: dict[str, Path], tmp_path: Path
) -> None:
    multi = session(onnx_models["multi"])
    feeds = {
        "a": np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4),
        "b": np.array([[3, -4], [5, 6]], np.int64),
    }
    wanted = ["half", "squared"]  # FP16 travels raw; both clients read it as any other
    expected = dict(zip(wanted, multi.run(wanted, feeds), strict=True))
    with replica(onnx_models["multi"], tmp_path, "--max-batch-size", "4", name="multi") as r:
        answer = run_check(
            r.address, "multi", feeds, expected, tmp_path, outputs=wanted, client=client
        )
    assert answer["outputs"] == wanted
    assert [t["name"] for t in answer["metadata"]["outputs"]] == ["doubled", "squared", "half"]
