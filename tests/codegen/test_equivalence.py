"""Same IR, same network: PyTorch, Keras, ONNX and the generated modules agree.

With the torch model's weights copied into the Keras model, outputs agree within 1e-4;
the ONNX export of the torch model agrees with it within 1e-4; generated code builds the
same modules (same parameters per layer) as the live builders; and parameter counts agree
with shape propagation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from neural_dsl import check
from neural_dsl.backends import example_inputs, export_onnx, keras_backend, torch_backend
from neural_dsl.backends.transfer import torch_to_keras

from tests.codegen.helpers import load
from tests.codegen.programs import PROGRAMS, TORCH_EXTRA_BIAS_GATES

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", params=sorted(PROGRAMS))
def built(request: pytest.FixtureRequest) -> dict[str, Any]:
    result = check(PROGRAMS[request.param])
    network = result.program.network
    report = result.shapes[network.name]
    torch.manual_seed(0)
    tm = torch_backend.build_live(network, report).eval()
    # Non-trivial statistics, so normalisation layers are really compared.
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    km = keras_backend.build_live(network, report, compile_model=False)
    torch_to_keras(network, report, tm, km)
    xs = example_inputs(network, batch=3, seed=1)
    with torch.no_grad():
        expected = tm(*[torch.from_numpy(x) for x in xs]).numpy()
    return {
        "name": request.param,
        "network": network,
        "report": report,
        "torch": tm,
        "keras": km,
        "inputs": xs,
        "expected": expected,
    }


def test_output_shape_matches_shape_propagation(built: dict[str, Any]) -> None:
    assert built["expected"].shape[1:] == tuple(built["report"].output_shape)


def test_keras_with_torch_weights_gives_the_same_outputs(built: dict[str, Any]) -> None:
    got = np.asarray(built["keras"](built["inputs"], training=False))
    np.testing.assert_allclose(got, built["expected"], atol=1e-4, rtol=1e-4)


def test_onnx_runtime_gives_the_same_outputs(built: dict[str, Any]) -> None:
    data = export_onnx(built["network"], built["report"], built["torch"])
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: x for i, x in zip(built["network"].inputs, built["inputs"], strict=True)}
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, built["expected"], atol=1e-4, rtol=1e-4)
    # the batch dimension stays dynamic
    one = {k: v[:1] for k, v in feeds.items()}
    assert session.run(None, one)[0].shape[0] == 1


def test_parameter_counts_agree(built: dict[str, Any]) -> None:
    network, report = built["network"], built["report"]
    keras_count = sum(int(np.prod(w.shape)) for w in built["keras"].trainable_weights)
    assert keras_count == report.total_params
    wrapped = {id(la.wrapped) for la in network.walk() if la.type == "Bidirectional"}
    extra = 0
    for layer in network.walk():
        if id(layer) in wrapped:
            continue
        inner = layer.wrapped if layer.type == "Bidirectional" else layer
        directions = 2 if layer.type == "Bidirectional" else 1
        extra += TORCH_EXTRA_BIAS_GATES.get(inner.type, 0) * inner.get("units", 0) * directions
    torch_count = sum(p.numel() for p in built["torch"].parameters() if p.requires_grad)
    assert torch_count == report.total_params + extra


def test_generated_pytorch_module_matches_the_live_model(
    built: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / f"gen_torch_{built['name']}.py"
    path.write_text(torch_backend.generate(built["network"], built["report"]))
    module = load(path, path.stem)
    model = module.build_model().eval()
    live = built["torch"]
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in live.state_dict().items()
    }
    model.load_state_dict(live.state_dict())
    with torch.no_grad():
        got = model(*[torch.from_numpy(x) for x in built["inputs"]]).numpy()
    np.testing.assert_array_equal(got, built["expected"])


def test_generated_keras_module_matches_the_live_model(
    built: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / f"gen_keras_{built['name']}.py"
    path.write_text(keras_backend.generate(built["network"], built["report"]))
    module = load(path, path.stem)
    model = module.build_model()
    live = built["keras"]
    assert [(w.path, w.shape) for w in model.weights] == [(w.path, w.shape) for w in live.weights]
    model.set_weights(live.get_weights())
    got = np.asarray(model(built["inputs"], training=False))
    np.testing.assert_allclose(got, built["expected"], atol=1e-4, rtol=1e-4)
