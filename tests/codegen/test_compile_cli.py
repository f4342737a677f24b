"""`python -m neural_dsl compile` and `backends`, run as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from neural_dsl import catalog, parse
from neural_dsl.backends import BACKENDS, build_keras, build_torch, support_matrix

from tests.dsl.helpers import net

HPO = net(
    'Flatten()\n    Dense(HPO(choice(16, 32)), "relu")\n    Output(10, "softmax")',
    extra="loss: sparse_categorical_crossentropy\n"
    "  optimizer: Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))",
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neural_dsl", *args], capture_output=True, text=True, timeout=300
    )


def test_backends_prints_the_matrix_computed_from_the_code() -> None:
    r = run("backends", "--json")
    assert r.returncode == 0
    matrix = json.loads(r.stdout)
    assert matrix == support_matrix()
    assert set(matrix) == set(catalog.LAYERS)
    assert matrix["Conv2D"] == {"pytorch": True, "tensorflow": True, "onnx": True}
    assert matrix["Lambda"] == {"pytorch": False, "tensorflow": False, "onnx": False}
    table = run("backends").stdout.splitlines()
    assert table[0].split() == ["layer", "family", *BACKENDS]


def test_compile_without_hparams_names_the_missing_values(tmp_path: Path) -> None:
    f = tmp_path / "hpo.neural"
    f.write_text(HPO)
    r = run("compile", str(f), "--backend", "pytorch", "-o", str(tmp_path / "m.py"))
    assert r.returncode == 1
    assert "no value for hyperparameter 'layers.dense_1.units'" in r.stderr
    assert "no value for hyperparameter 'optimizer.learning_rate'" in r.stderr
    assert "search space log_range(0.0001, 0.01)" in r.stderr
    assert not (tmp_path / "m.py").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_with_hparams_writes_the_artifact(tmp_path: Path, backend: str) -> None:
    f = tmp_path / "hpo.neural"
    f.write_text(HPO)
    out = tmp_path / ("m.onnx" if backend == "onnx" else "m.py")
    hp = json.dumps({"layers.dense_1.units": 32, "optimizer.learning_rate": 0.001})
    r = run("compile", str(f), "--backend", backend, "-o", str(out), "--hparams", hp)
    assert r.returncode == 0, r.stderr
    assert f"{backend}, network T, 25,450 parameters" in r.stdout  # 784*32+32 + 32*10+10
    if backend == "onnx":
        import onnx

        model = onnx.load(out)
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
    else:
        text = out.read_text()
        assert "def build_model()" in text
        compile(text, str(out), "exec")


def test_compile_to_stdout_writes_the_source_and_the_summary_to_stderr(tmp_path: Path) -> None:
    f = tmp_path / "plain.neural"
    f.write_text(net('Flatten()\n    Output(10, "softmax")'))
    r = run("compile", str(f), "--backend", "tensorflow", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert "def build_model()" in r.stdout
    compile(r.stdout, "model_keras.py", "exec")
    assert "<stdout>: tensorflow, network T, 7,850 parameters" in r.stderr
    assert list(tmp_path.iterdir()) == [f]  # no file written


def test_compile_onnx_to_a_pipe_writes_the_model(tmp_path: Path) -> None:
    import onnx

    f = tmp_path / "plain.neural"
    f.write_text(net('Flatten()\n    Output(10, "softmax")'))
    r = subprocess.run(
        [sys.executable, "-m", "neural_dsl", "compile", str(f), "--backend", "onnx", "-o", "-"],
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    onnx.checker.check_model(onnx.load_from_string(r.stdout), full_check=True)


def test_compile_onnx_refuses_a_terminal(tmp_path: Path) -> None:
    import os
    import pty

    f = tmp_path / "plain.neural"
    f.write_text(net('Flatten()\n    Output(10, "softmax")'))
    leader, follower = pty.openpty()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "neural_dsl", "compile", str(f), "--backend", "onnx", "-o", "-"],
            stdout=follower,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert r.returncode == 2
    assert "an ONNX model is binary: redirect standard output" in r.stderr


@pytest.mark.parametrize(
    ("backend", "name"),
    [("pytorch", "mnist.py"), ("tensorflow", "mnist_keras.py"), ("onnx", "mnist.onnx")],
)
def test_compile_without_output_names_the_file_after_the_input(
    tmp_path: Path, backend: str, name: str
) -> None:
    f = tmp_path / "mnist.neural"
    f.write_text(net('Flatten()\n    Output(10, "softmax")'))
    r = run("compile", str(f), "--backend", backend)
    assert r.returncode == 0, r.stderr
    out = tmp_path / name
    assert f"{out}: {backend}, network T, 7,850 parameters" in r.stdout
    if backend == "onnx":
        import onnx

        onnx.checker.check_model(onnx.load(out), full_check=True)
    else:
        assert "def build_model()" in out.read_text()


def test_compile_rejects_a_value_outside_its_space(tmp_path: Path) -> None:
    f = tmp_path / "hpo.neural"
    f.write_text(HPO)
    hp = json.dumps({"layers.dense_1.units": 17, "optimizer.learning_rate": 0.001})
    r = run(
        "compile", str(f), "--backend", "tensorflow", "-o", str(tmp_path / "m.py"), "--hparams", hp
    )
    assert r.returncode == 1
    assert (
        "value 17 for 'layers.dense_1.units' is outside its search space choice(16, 32)" in r.stderr
    )


def test_unsupported_layer_names_layer_line_and_backend(tmp_path: Path) -> None:
    f = tmp_path / "caps.neural"
    f.write_text(net("Reshape((28, 28))\n    CapsuleLayer()"))
    r = run("compile", str(f), "--backend", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert r.returncode == 1
    assert ":5:5: error: CapsuleLayer (line 5) is not supported by the onnx backend" in r.stderr


def test_several_networks_need_network_flag(tmp_path: Path) -> None:
    f = tmp_path / "two.neural"
    f.write_text(net("Flatten()") + net("Flatten()").replace("network T", "network U"))
    r = run("compile", str(f), "--backend", "pytorch", "-o", str(tmp_path / "m.py"))
    assert r.returncode == 2 and "pick one with --network" in r.stderr
    r = run(
        "compile", str(f), "--backend", "pytorch", "-o", str(tmp_path / "m.py"), "--network", "U"
    )
    assert r.returncode == 0, r.stderr


def test_repetition_gives_distinct_layers_in_every_backend() -> None:
    network = parse(net("Flatten()\n    Dense(8) * 3", input_shape="(4)")).network
    torch_model = build_torch(network)
    weights = [torch_model.dense_1.linear.weight, torch_model.dense_2.linear.weight]
    assert weights[0] is not weights[1]
    keras_model = build_keras(network)
    assert [la.name for la in keras_model.layers[-3:]] == ["dense_1", "dense_2", "dense_3"]


def test_device_placement_is_honoured_where_the_device_exists_and_warned_otherwise() -> None:
    import torch

    network = parse(net('Flatten()\n    Dense(8) @ "cuda:0"\n    Dense(2) @ "cpu"')).network
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_torch(network)
    cuda = torch.cuda.is_available()
    assert any("not available" in str(w.message) for w in caught) is not cuda
    assert next(model.dense_1.parameters()).device.type == ("cuda" if cuda else "cpu")
    out = model(torch.zeros(3, 28, 28, 1))
    assert out.shape == (3, 2) and out.device.type == "cpu"


def test_generated_pytorch_code_places_layers_on_their_device(tmp_path: Path) -> None:
    import torch
    from neural_dsl.backends import compile_network

    from tests.codegen.helpers import load

    network = parse(net('Flatten()\n    Dense(8) @ "cuda:0"\n    Dense(2)')).network
    path = tmp_path / "placed.py"
    path.write_text(compile_network(network, "pytorch").source or "")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(path, "placed").build_model()
    cuda = torch.cuda.is_available()
    assert any("not available" in str(w.message) for w in caught) is not cuda
    assert next(model.dense_1.parameters()).device.type == ("cuda" if cuda else "cpu")
    assert next(model.dense_2.parameters()).device.type == "cpu"
    assert model(torch.zeros(3, 28, 28, 1)).shape == (3, 2)


def test_placed_branches_merge_on_the_merge_layers_device() -> None:
    import torch

    text = """
network Two {
  input: { a: (4), b: (4) }
  layers:
    a: { Dense(3) @ "cuda:0" }
    b: { Dense(3) }
    Concatenate()
    Dense(2)
}
"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_torch(parse(text).network)
    out = model(torch.ones(2, 4), torch.ones(2, 4))
    assert out.shape == (2, 2) and out.device.type == "cpu"


def test_generating_source_imports_no_framework(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from neural_dsl import parse\n"
        "from neural_dsl.backends import compile_network\n"
        f"n = parse({net('Conv2D(4, (3,3))  Flatten()  Dense(2)')!r}).network\n"
        "for b in ('pytorch', 'tensorflow'):\n"
        "    assert 'build_model' in compile_network(n, b).source\n"
        "print([m for m in ('torch', 'tensorflow', 'keras', 'onnx') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
