"""Every corpus program that checks and that the support matrix allows, on every backend:
compiled, then imported and run in a fresh interpreter on random input of its declared
shape; the output shape is the one shape propagation gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from neural_dsl import DSLError, check
from neural_dsl.backends import BACKENDS, compile_network, example_inputs, supports
from neural_dsl.hparams import first_values

from tests.conftest import ROOT

# The corpus programs that pass `check` (the others are rejected with their reason in
# tests/dsl/test_corpus.py); all of them use only layers every backend supports.
COMPILABLE = {
    "Lambda-sec_Models__Transformer__transformer.neural",
    "examples__LayersMultiplication+NestedLayers.neural",
    "examples__advanced_hpo_v0.2.5.neural",
    "examples__example.neural",
    "examples__gpu.neural",
    "examples__layer_multiplication.neural",
    "examples__macros.neural",
    "examples__mnist.neural",
    "examples__mnist_2.neural",
    "examples__mnist_hpo.neural",  # Dense on an image: the last axis, as in Keras
    "examples__tiny.neural",
    "neuralpaper__backend__models__resnet.neural",
    "tests__tmp_path__sample.neural",
}


def compilable(corpus: Path) -> dict[str, str]:
    found = {}
    for path in sorted((corpus / "examples").glob("*.neural")):
        text = path.read_text(encoding="utf-8")
        try:
            check(text)
        except DSLError:
            continue
        found[path.name] = text
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_corpus_compiles_and_runs_in_a_fresh_interpreter(
    corpus: Path, backend: str, tmp_path: Path
) -> None:
    programs = compilable(corpus)
    assert set(programs) == COMPILABLE
    entries, expected = [], {}
    for name, text in programs.items():
        network = check(text).program.network
        assert all(supports(backend, la.type) for la in network.walk() if la.type != "Branch")
        result = compile_network(network, backend, first_values(network))
        module = "gen_" + re.sub(r"\W", "_", name.removesuffix(".neural"))
        artifact = tmp_path / (module + (".onnx" if backend == "onnx" else ".py"))
        if result.onnx is not None:
            artifact.write_bytes(result.onnx)
        else:
            artifact.write_text(result.source or "")
        inputs = tmp_path / f"{module}.npz"
        np.savez(inputs, *example_inputs(result.network, batch=2))
        entries.append(
            {"backend": backend, "module": module, "artifact": str(artifact), "inputs": str(inputs)}
        )
        expected[module] = [2, *result.shapes.output_shape]
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(entries))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "codegen" / "run_generated.py"), str(manifest)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shapes"] == expected
    assert report["imports_neural_dsl"] is False
