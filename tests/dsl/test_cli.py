"""`python -m neural_dsl check|shapes|ir` as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.dsl.helpers import net

MNIST = net(
    'Conv2D(32, (3,3), "relu")\n    MaxPooling2D((2,2))\n    Flatten()\n'
    '    Dense(128, "relu")\n    Output(10, "softmax")',
    extra='loss: "sparse_categorical_crossentropy"\n  optimizer: Adam(learning_rate=0.001)',
)


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "neural_dsl", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_check_valid_program_exits_zero(tmp_path: Path) -> None:
    f = tmp_path / "mnist.neural"
    f.write_text(MNIST)
    r = run("check", str(f))
    assert r.returncode == 0, r.stderr
    assert "ok: T (693,962 parameters)" in r.stdout


def test_check_reports_file_line_column_and_a_caret(tmp_path: Path) -> None:
    f = tmp_path / "bad.neural"
    f.write_text(net("Flatten()\n    Dense(12)\n    Dropout(1.5)"))
    r = run("check", str(f))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[0] == (
        f"{f}:6:13: error: Dropout rate should be between 0 and 1 (0 <= rate < 1), got 1.5"
    )
    assert lines[1] == "        Dropout(1.5)"
    assert lines[2] == "    " + " " * 12 + "^"


def test_check_reports_syntax_errors(tmp_path: Path) -> None:
    f = tmp_path / "open.neural"
    f.write_text("network Test { input: (1,1) layers: Dense(10)")
    r = run("check", str(f))
    assert r.returncode == 1
    assert r.stderr.startswith(
        f"{f}:1:46: error: Unexpected end of input - Check for missing closing braces"
    )


def test_check_reports_shape_errors(tmp_path: Path) -> None:
    f = tmp_path / "shape.neural"
    f.write_text(net("Flatten()\n    Conv2D(8, (3,3))"))
    r = run("check", str(f))
    assert r.returncode == 1
    assert ":5:5: error: Conv2D expects (height, width, channels) input, got (784,)" in r.stderr


def test_shapes_prints_json_per_layer(tmp_path: Path) -> None:
    f = tmp_path / "mnist.neural"
    f.write_text(MNIST)
    r = run("shapes", str(f))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["name"], x["type"], x["output_shape"], x["params"]) for x in doc["layers"]] == [
        ("conv2d_1", "Conv2D", [None, 26, 26, 32], 320),
        ("max_pooling2d_1", "MaxPooling2D", [None, 13, 13, 32], 0),
        ("flatten_1", "Flatten", [None, 5408], 0),
        ("dense_1", "Dense", [None, 128], 692352),
        ("output_1", "Output", [None, 10], 1290),
    ]
    assert doc["total_params"] == 693962


def test_ir_prints_versioned_json_from_stdin() -> None:
    r = run("ir", "-", stdin=MNIST)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ir_version"] == 1
    assert doc["networks"][0]["optimizer"]["type"] == "Adam"


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    r = run("check", str(tmp_path / "nope.neural"))
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_cli_never_imports_a_framework(tmp_path: Path) -> None:
    code = (
        "import sys, neural_dsl.cli as c\n"
        f"c.main(['check', {str(tmp_path / 'x.neural')!r}])\n"
        "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "print(bad)\n"
    )
    (tmp_path / "x.neural").write_text(MNIST)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "[]"


HPO_PROGRAM = net(
    "Flatten()\n"
    '    Dense(HPO(choice(16, 32)), "relu")\n'
    "    Dropout(HPO(range(0.1, 0.5, step=0.1)))\n"
    '    Output(10, "softmax")',
    extra="loss: sparse_categorical_crossentropy\n"
    "  optimizer: Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))",
)


def test_hparams_lists_every_name_with_its_space_and_line(tmp_path: Path) -> None:
    f = tmp_path / "hpo.neural"
    f.write_text(HPO_PROGRAM)
    r = run("hparams", str(f))
    assert r.returncode == 0, r.stderr
    rows = [line.split("  ") for line in r.stdout.splitlines()]
    assert [(where.split(":")[0], name, space) for where, name, space in rows] == [
        ("5", "layers.dense_1.units", "choice(16, 32)"),
        ("6", "layers.dropout_1.rate", "range(0.1, 0.5, step=0.1)"),
        ("9", "optimizer.learning_rate", "log_range(0.0001, 0.01)"),
    ]
    as_json = json.loads(run("hparams", "--json", str(f)).stdout)
    assert as_json[0] == {
        "network": "T",
        "name": "layers.dense_1.units",
        "space": "choice(16, 32)",
        "line": 5,
        "column": 11,
    }


def test_hparams_of_a_program_without_any_prints_nothing(tmp_path: Path) -> None:
    f = tmp_path / "plain.neural"
    f.write_text(MNIST)
    r = run("hparams", str(f))
    assert r.returncode == 0 and r.stdout == ""


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    f = tmp_path / "mnist.neural"
    f.write_text(MNIST)
    proc = subprocess.Popen(
        [sys.executable, "-m", "neural_dsl", "ir", str(f)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141  # as a process stopped by SIGPIPE, and silent
    assert err == ""
