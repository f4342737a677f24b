"""The direct IR -> ONNX lowering: with a torch model's weights, onnxruntime gives the torch
model's outputs (batch 1 and 7, within 1e-5) for every layer type and corpus program; the
graphs pass onnx.checker's full check; fresh weights have the torch model's layout; and
lowering never imports torch."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from neural_dsl import check, parse
from neural_dsl.backends import example_inputs, onnx_backend, prepare, torch_backend
from neural_dsl.backends.onnx_backend import UnsupportedLayer, build, to_onnx, torch_state_dict
from neural_dsl.hparams import first_values
from neural_dsl.ir import Network

from tests.codegen.programs import PROGRAMS, program
from tests.codegen.test_corpus_backends import compilable

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.unit

ATOL = 1e-5

# One tiny program per layer type (and per setting that lowers differently).
LAYERS: dict[str, str] = {
    "Dense": program("(6)", 'Dense(4, "relu")'),
    "Output": program("(6)", 'Output(3, "softmax")'),
    "Activation": program("(6)", 'Activation("leaky_relu", alpha=0.1)'),
    "Flatten": program("(3, 4, 2)", "Flatten()"),
    "Dropout": program("(6)", "Dropout(0.5)"),
    "Reshape": program("(12)", "Reshape((3, 4))"),
    "GaussianNoise": program("(6)", "GaussianNoise(0.2)"),
    "Conv1D": program("(12, 3)", 'Conv1D(4, 3, padding="causal", dilation_rate=2)'),
    "Conv2D": program("(9, 9, 3)", 'Conv2D(4, (3,3), strides=2, padding="same")'),
    "Conv2D_valid": program("(9, 9, 3)", 'Conv2D(4, (2,3), "tanh", dilation_rate=2)'),
    "Conv3D": program("(5, 5, 5, 2)", 'Conv3D(3, (3,3,3), padding="same")'),
    "SeparableConv2D": program(
        "(8, 8, 3)", 'SeparableConv2D(5, (3,3), padding="same", depth_multiplier=2)'
    ),
    "DepthwiseConv2D": program("(8, 8, 3)", "DepthwiseConv2D((3,3), depth_multiplier=2)"),
    "Conv2DTranspose": program("(5, 5, 3)", "Conv2DTranspose(4, (3,3), strides=2)"),
    "MaxPooling1D": program("(9, 3)", 'MaxPooling1D(2, padding="same")'),
    "MaxPooling2D": program("(9, 9, 3)", 'MaxPooling2D((2,2), padding="same")'),
    "MaxPooling3D": program("(4, 4, 4, 2)", "MaxPooling3D((2,2,2))"),
    "AveragePooling1D": program("(9, 3)", "AveragePooling1D(3, strides=2)"),
    "AveragePooling2D": program("(9, 9, 3)", 'AveragePooling2D((2,2), padding="same")'),
    "AveragePooling3D": program("(4, 4, 4, 2)", 'AveragePooling3D((3,3,3), padding="same")'),
    "GlobalMaxPooling1D": program("(7, 3)", "GlobalMaxPooling1D()"),
    "GlobalAveragePooling2D": program("(5, 5, 3)", "GlobalAveragePooling2D(keepdims=true)"),
    "GlobalMaxPooling3D": program("(3, 3, 3, 2)", "GlobalMaxPooling3D()"),
    "BatchNormalization": program("(5, 5, 3)", "BatchNormalization()"),
    "BatchNormalization_flat": program("(6)", "BatchNormalization(epsilon=0.01)"),
    "LayerNormalization": program("(4, 6)", "LayerNormalization()"),
    "GroupNormalization": program("(5, 5, 4)", "GroupNormalization(groups=2)"),
    "InstanceNormalization": program("(5, 5, 3)", "InstanceNormalization()"),
    "Embedding": program("(10)", "Embedding(30, 4)"),
    "LSTM": program("(7, 5)", "LSTM(6)"),
    "LSTM_sequences": program("(7, 5)", "LSTM(6, return_sequences=true)"),
    "GRU": program("(7, 5)", "GRU(4, return_sequences=true)"),
    "SimpleRNN": program("(7, 5)", 'SimpleRNN(5, activation="relu")'),
    "Bidirectional_LSTM": program("(7, 5)", "Bidirectional(LSTM(3, return_sequences=true))"),
    "Bidirectional_GRU": program("(7, 5)", 'Bidirectional(GRU(3), merge_mode="sum")'),
    "Bidirectional_RNN": program("(7, 5)", 'Bidirectional(SimpleRNN(3), merge_mode="ave")'),
    "Attention": program("(6, 8)", "Attention(use_scale=true)"),
    "MultiHeadAttention": program("(6, 8)", "MultiHeadAttention(num_heads=2, key_dim=3)"),
    "TransformerEncoder": program("(6, 8)", "TransformerEncoder(num_heads=2, ff_dim=16)"),
    "TransformerDecoder": program("(6, 8)", "TransformerDecoder(num_heads=4, ff_dim=8)"),
    "ResidualConnection": program(
        "(6, 6, 4)", 'ResidualConnection { Conv2D(8, (3,3), strides=2, padding="same") }'
    ),
    "TimeDistributed": program("(4, 6)", 'TimeDistributed(Dense(5, "relu"), dropout=0.1)'),
    "SqueezeExcitation": program("(5, 5, 8)", "SqueezeExcitation(ratio=4)"),
}

# the ops programs.py's `activations` program does not reach
LAYERS["Subtract"] = """
network P {
  input: { a: (6), b: (6) }
  layers:
    a: { Dense(4) }
    b: { Dense(4) }
    Subtract()
}
"""
for merge in ("Multiply", "Average", "Maximum", "Minimum"):
    LAYERS[merge] = LAYERS["Subtract"].replace("Subtract", merge)
LAYERS["Concatenate"] = PROGRAMS["branches"]
LAYERS["Add"] = PROGRAMS["merges"]

# max |onnx - torch| per case, printed at the end of the run (-s) for the record
DIFFS: dict[str, float] = {}


def torch_model(network: Network, seed: int = 0) -> tuple[Network, Any]:
    network, report = prepare(network, "pytorch", first_values(network))
    torch.manual_seed(seed)
    model = torch_backend.build_live(network, report).eval()
    with torch.no_grad():  # non-trivial statistics, so normalisation is really compared
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
            if isinstance(mod, torch.nn.RNNBase):  # bias_hh is zero in Keras-converted models
                for name, p in mod.named_parameters():
                    if name.startswith("bias"):
                        p.uniform_(-0.5, 0.5)
    return network, model


def max_diff(network: Network, model: Any) -> float:
    proto = to_onnx(network, torch_state_dict(model))
    onnx.checker.check_model(proto, full_check=True)
    # the product path: the skeleton checked, the weights streamed behind it
    lowered = build(network, prepare(network, "pytorch")[1], torch_state_dict(model))
    lowered.check()
    streamed = lowered.serialize()
    assert onnx.load_from_string(streamed) == proto
    session = ort.InferenceSession(streamed, providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in (1, 7):
        xs = example_inputs(network, batch=batch, seed=batch)
        with torch.no_grad():
            want = model(*[torch.from_numpy(x) for x in xs]).numpy()
        got = session.run(None, {i.name: x for i, x in zip(network.inputs, xs, strict=True)})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


@pytest.fixture(scope="module", autouse=True)
def report_diffs() -> Any:
    yield
    for name, d in sorted(DIFFS.items()):
        print(f"onnx vs torch max abs diff {name}: {d:.2e}")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_torch(name: str) -> None:
    network, model = torch_model(check(LAYERS[name]).program.network)
    DIFFS[name] = max_diff(network, model)


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_codegen_program_matches_torch(name: str) -> None:
    network, model = torch_model(check(PROGRAMS[name]).program.network)
    DIFFS[f"program {name}"] = max_diff(network, model)


def test_every_corpus_program_matches_torch(corpus: Path) -> None:
    programs = compilable(corpus)
    assert programs
    for name, text in programs.items():
        network, model = torch_model(check(text).program.network)
        DIFFS[f"corpus {name}"] = max_diff(network, model)


def test_fresh_weights_have_the_torch_layout_and_scale() -> None:
    network = check(PROGRAMS["recurrent"]).program.network
    network, model = torch_model(network)
    fresh = to_onnx(network, seed=3)
    onnx.checker.check_model(fresh, full_check=True)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in fresh.graph.initializer}
    # the torch-named parameters keep torch's shapes; uniform init stays in torch's bound
    w = inits["dense_1.linear.weight"]
    assert w.shape == tuple(model.state_dict()["dense_1.linear.weight"].shape)
    assert 0 < np.abs(w).max() <= 1 / np.sqrt(w.shape[1])
    # the same weights given explicitly reproduce the fresh model
    again = to_onnx(network, torch_state_dict(model))
    assert {t.name for t in again.graph.initializer} == set(inits)
    assert not np.array_equal(inits["dense_1.linear.weight"], _init(again, "dense_1.linear.weight"))
    assert np.array_equal(_init(to_onnx(network, seed=3), "dense_1.linear.weight"), w)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    t = next(t for t in model.graph.initializer if t.name == name)
    return onnx.numpy_helper.to_array(t)


def test_inputs_and_output_are_named_and_batch_is_dynamic() -> None:
    proto = to_onnx(check(PROGRAMS["branches"]).program.network)
    assert [i.name for i in proto.graph.input] == ["image", "meta"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [8, 8, 1]
    assert proto.opset_import[0].version == 18


def test_wrong_weights_are_refused() -> None:
    network, model = torch_model(check(LAYERS["Dense"]).program.network)
    weights = torch_state_dict(model)
    with pytest.raises(ValueError, match="shape"):
        to_onnx(network, {**weights, "dense_1.linear.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="does not have"):
        to_onnx(network, {**weights, "extra.weight": np.zeros(2)})


def test_an_unsupported_layer_is_named() -> None:
    network = parse(program("(6)", 'Lambda("x * 2")\n Dense(2)')).network
    with pytest.raises(UnsupportedLayer, match="Lambda"):
        to_onnx(network)
    # a setting the lowering does not express names its layer too
    network = check(program("(5, 5, 3)", 'Conv2DTranspose(4, (3,3), padding="same")')).program
    with pytest.raises(UnsupportedLayer, match=r"Conv2DTranspose.*padding='same'"):
        to_onnx(network.network)


@pytest.mark.parametrize(
    "layers",
    [
        "LSTM(4, return_sequences=true)\n Dense(2)",
        "TransformerDecoder(num_heads=2, ff_dim=8)",
        "TimeDistributed(Dense(3))\n GlobalAveragePooling1D()",
    ],
)
def test_a_time_axis_declared_none_stays_dynamic(layers: str) -> None:
    # the torch exporter fixes such a dimension at the example's length; here it stays open
    network, model = torch_model(check(program("(None, None, 8)", layers)).program.network)
    session = ort.InferenceSession(
        to_onnx(network, torch_state_dict(model)).SerializeToString(),
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(0)
    for steps in (3, 9):
        x = rng.standard_normal((2, steps, 8)).astype("float32")
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x})[0], want, atol=ATOL, rtol=0)


def test_same_padding_over_a_dimension_declared_none_is_refused() -> None:
    network = check(program("(None, None, 4)", 'Conv1D(3, 3, padding="same")')).program.network
    with pytest.raises(UnsupportedLayer, match=r"Conv1D.*static"):
        to_onnx(network)


def test_lowering_a_fresh_model_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from neural_dsl import check\n"
        "from neural_dsl.backends.onnx_backend import to_onnx\n"
        "import onnx\n"
        f"net = check({PROGRAMS['recurrent']!r}).program.network\n"
        "onnx.checker.check_model(to_onnx(net), full_check=True)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"


def test_a_model_over_the_protobuf_limit_is_refused_before_a_byte_is_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network, report = prepare(check(PROGRAMS["conv2d"]).program.network, "pytorch")
    lowered = build(network, report)
    monkeypatch.setattr(onnx_backend, "MAX_MODEL_BYTES", len(lowered.serialize()) - 1)
    out = io.BytesIO()
    with pytest.raises(ValueError, match="2 GiB"):
        lowered.write(out)
    assert out.tell() == 0


BIG = """
network Big {
  input: (10000,)
  layers:
    Dense(10000)
    Output(10, "softmax")
}
"""


def test_a_1e8_parameter_model_compiles_within_the_memory_of_its_weights(tmp_path: Path) -> None:
    """`neural_dsl compile --backend onnx` of 10^8 parameters (400 MB of float32): the process's
    peak stays under the weights x 1.5 + 150 MB (the torch exporter took 2.45 GB; a copy of
    the weights in TensorProtos plus the serialized bytes would be 3x)."""
    src = tmp_path / "big.neural"
    src.write_text(BIG)
    out = tmp_path / "big.onnx"
    code = (
        "import re, sys\n"
        "from neural_dsl.cli import main\n"
        f"rc = main(['compile', {str(src)!r}, '--backend', 'onnx', '-o', {str(out)!r}])\n"
        # VmHWM: this program's peak (ru_maxrss would count the forked test process's pages)
        "status = open('/proc/self/status').read()\n"
        "print(int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.strip().splitlines()[-1])
    weights = (10000 * 10000 + 10000 + 10000 * 10 + 10) * 4
    assert out.stat().st_size > weights
    assert peak <= weights * 1.5 + 150 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": np.ones((2, 10000), np.float32)})[0]
    assert got.shape == (2, 10) and np.allclose(got.sum(axis=1), 1, atol=1e-5)
