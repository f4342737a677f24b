"""A Keras model's weights as the PyTorch state_dict (keras_weights, the inverse of
transfer.torch_to_keras), so a Keras-trained model exports to ONNX: for every layer type,
tests/codegen's programs and the corpus, torch weights copied into Keras and read back are
torch's state_dict (every key, in torch's order; the recurrent biases by their sum), and
the ONNX model lowered with them gives the Keras model's outputs (batch 1 and 7, within
1e-5) under onnxruntime; so does a Keras model trained a few steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from neural_dsl import DSLError, check
from neural_dsl.backends import example_inputs, keras_backend, prepare
from neural_dsl.backends.keras_weights import state_dict_from_keras
from neural_dsl.backends.onnx_backend import lower, torch_state_dict
from neural_dsl.backends.transfer import torch_to_keras
from neural_dsl.hparams import first_values
from neural_dsl.ir import Network

from tests.codegen.programs import PROGRAMS, program
from tests.codegen.test_corpus_backends import compilable
from tests.codegen.test_onnx_backend import ATOL, LAYERS, torch_model

torch = pytest.importorskip("torch")
keras = pytest.importorskip("keras")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.unit

# What LAYERS and PROGRAMS leave out: no biases (no bias keys), the dropout-wrapped RNN,
# and wrappers around layers with weights and statistics.
EXTRA: dict[str, str] = {
    "conv_no_bias": program(
        "(8, 8, 3)",
        """
        Conv2D(4, (3,3), use_bias=false)
        SeparableConv2D(4, (3,3), use_bias=false)
        DepthwiseConv2D((3,3), use_bias=false)
        Conv2DTranspose(3, (2,2), use_bias=false)
        """,
    ),
    "recurrent_no_bias": program(
        "(7, 5)",
        """
        LSTM(4, return_sequences=true, use_bias=false)
        GRU(3, return_sequences=true, use_bias=false)
        SimpleRNNDropoutWrapper(5, dropout=0.2, return_sequences=true)
        Bidirectional(SimpleRNN(3, use_bias=false))
        Dense(2, use_bias=false)
        """,
    ),
    "wrapped_weights": program(
        "(3, 6, 6, 2)",
        """
        TimeDistributed(Conv2D(4, (3,3))) { BatchNormalization() }
        TimeDistributed(Flatten())
        Bidirectional(GRU(3, return_sequences=true))
        TimeDistributed(LayerNormalization())
        ResidualConnection { LSTM(4, return_sequences=true) }
        """,
    ),
}
CASES = {
    **{f"layer {k}": v for k, v in LAYERS.items()},
    **{f"program {k}": v for k, v in PROGRAMS.items()},
    **{f"extra {k}": v for k, v in EXTRA.items()},
}
# max |onnx - keras| per case, printed at the end of the run (-s) for the record
DIFFS: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def report_diffs() -> Any:
    yield
    for name, d in sorted(DIFFS.items()):
        print(f"onnx vs keras max abs diff {name}: {d:.2e}")


def keras_model(network: Network) -> tuple[Network, Any, Any]:
    """The network as the Keras engine prepares and builds it."""
    network, report = prepare(network, "tensorflow", first_values(network))
    return network, report, keras_backend.build_live(network, report, compile_model=False)


def from_torch(text: str) -> dict[str, Any]:
    """A torch model (random normalisation statistics and recurrent biases), its weights
    copied into the Keras model of the same network, and read back from Keras."""
    parsed = check(text).program.network
    tm = torch_model(parsed)[1]
    k_net, report, km = keras_model(parsed)
    torch_to_keras(k_net, report, tm, km)
    return {
        "torch_report": prepare(parsed, "pytorch", first_values(parsed))[1],
        "network": k_net,
        "report": report,
        "torch": tm,
        "keras": km,
        "state": state_dict_from_keras(k_net, report, km),
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"name": request.param, **from_torch(CASES[request.param])}


def assert_is_torch_state(state: dict[str, np.ndarray], torch_model: Any) -> None:
    want = torch_state_dict(torch_model)
    assert list(state) == list(want)  # the same keys, in torch's order
    for key, value in want.items():
        got = state[key]
        assert isinstance(got, np.ndarray), key
        assert got.shape == value.shape and got.dtype == value.dtype, key
        if ".bias_" in key and ".rnn." in key:
            continue  # compared by their sum below
        np.testing.assert_array_equal(got, value, err_msg=key)
    for key in (k for k in want if ".bias_ih_l0" in k):
        hh = key.replace(".bias_ih_l0", ".bias_hh_l0")
        np.testing.assert_allclose(
            state[key] + state[hh], want[key] + want[hh], atol=1e-6, rtol=0, err_msg=key
        )
        if isinstance(torch_model.get_submodule(key.rsplit(".", 1)[0]), torch.nn.GRU):
            # Keras' GRU (reset_after=True) keeps both biases, as torch does
            np.testing.assert_array_equal(state[key], want[key], err_msg=key)
            np.testing.assert_array_equal(state[hh], want[hh], err_msg=hh)
        else:  # Keras' one bias is their sum
            assert not state[hh].any(), hh


def onnx_vs_keras(network: Network, report: Any, state: dict[str, np.ndarray], km: Any) -> float:
    """Worst |onnx - keras| at batch 1 and 7; each within ATOL."""
    session = ort.InferenceSession(
        lower(network, report, state).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    worst = 0.0
    for batch in (1, 7):
        xs = example_inputs(network, batch=batch, seed=batch)
        want = np.asarray(km(xs, training=False))
        got = session.run(None, {i.name: x for i, x in zip(network.inputs, xs, strict=True)})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def test_both_backends_prepare_the_same_report(built: dict[str, Any]) -> None:
    # the Keras engine's report (tensorflow) names the layers the torch keys come from
    assert built["report"] == built["torch_report"]


def test_keras_weights_read_back_are_the_torch_state_dict(built: dict[str, Any]) -> None:
    assert_is_torch_state(built["state"], built["torch"])


def test_torch_loads_them_and_computes_the_same(built: dict[str, Any]) -> None:
    model = torch_model(built["network"], seed=1)[1]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in built["state"].items()})
    xs = example_inputs(built["network"], batch=3, seed=2)
    with torch.no_grad():
        got = model(*[torch.from_numpy(x) for x in xs]).numpy()
        want = built["torch"](*[torch.from_numpy(x) for x in xs]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_onnx_with_keras_weights_gives_keras_outputs(built: dict[str, Any]) -> None:
    DIFFS[built["name"]] = onnx_vs_keras(
        built["network"], built["report"], built["state"], built["keras"]
    )


def test_every_corpus_program_round_trips(corpus: Path) -> None:
    programs = compilable(corpus)
    assert programs
    for name, text in programs.items():
        b = from_torch(text)
        assert_is_torch_state(b["state"], b["torch"])
        DIFFS[f"corpus {name}"] = onnx_vs_keras(b["network"], b["report"], b["state"], b["keras"])


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_keras_trained_model_exports_to_its_own_outputs(name: str) -> None:
    # Keras' own initialisation, then optimizer steps (moving statistics too): no torch weights
    network, report, km = keras_model(check(PROGRAMS[name]).program.network)
    keras.utils.set_random_seed(0)
    # eager: three steps do not repay tracing a training graph
    km.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", run_eagerly=True)
    before = [w.copy() for w in km.get_weights()]
    xs = example_inputs(network, batch=16, seed=3)
    target = np.random.default_rng(4).standard_normal((16, *report.output_shape)).astype("float32")
    for _ in range(3):
        km.train_on_batch(xs, target)
    changed = [not np.array_equal(a, b) for a, b in zip(before, km.get_weights(), strict=True)]
    assert changed and all(changed)
    state = state_dict_from_keras(network, report, km)
    DIFFS[f"trained {name}"] = onnx_vs_keras(network, report, state, km)


def test_a_keras_setting_torch_lacks_is_refused_naming_the_layer() -> None:
    network, report, km = keras_model(
        check(program("(7, 5)", "LSTM(4, recurrent_dropout=0.2)")).program.network
    )
    with pytest.raises(DSLError, match=r"LSTM \(line 4\).*recurrent_dropout"):
        state_dict_from_keras(network, report, km)


def test_reading_keras_weights_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from neural_dsl import check\n"
        "from neural_dsl.backends import build_keras, prepare\n"
        "from neural_dsl.backends.keras_weights import state_dict_from_keras\n"
        f"net, report = prepare(check({PROGRAMS['recurrent']!r}).program.network, 'tensorflow')\n"
        "state = state_dict_from_keras(net, report, build_keras(net))\n"
        "print(len(state), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["30", "False"]
