"""The `neural` console script against `make run`'s stack, through the gateway only: a bad
program's diagnostics, compile, train with --watch, runs as JSON, a plot, deploy, predict, and
the message for a missing key."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from scripts.local_stack import ROOT, admin_key, running_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

NEURAL = Path(sys.executable).parent / "neural"
PROGRAM = """network CliDigits {
  input: (64,)
  layers:
    Dense(32, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
  train { epochs: 3 batch_size: 32 validation_split: 0.2 }
}
"""
BAD = 'network Bad {\n  input: (4,)\n  layers:\n    Dense(3, "relu"\n    Output(2)\n}\n'


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    """What a user's shell holds: NEURAL_URL (the gateway) and NEURAL_API_KEY (an admin key)."""
    with tempfile.TemporaryDirectory(prefix="neural-cli-") as tmp, running_stack(Path(tmp)) as s:
        yield {
            **s,
            "NEURAL_URL": f"127.0.0.1:{s['NEURAL_GATEWAY_PORT']}",
            "NEURAL_API_KEY": admin_key(s),
        }


def neural(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(NEURAL), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("programs")
    (folder / "digits.neural").write_text(PROGRAM)
    (folder / "bad.neural").write_text(BAD)
    return folder


@pytest.fixture(scope="module")
def run_id(env: dict[str, str], programs: Path) -> str:
    """`neural train --watch` on digits: each epoch and the end are shown; the run's id."""
    done = neural(
        env, "train", str(programs / "digits.neural"), "--dataset", "digits", "--epochs", "3",
        "--experiment", "cli-e2e", "--watch", "--no-input",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    assert "loss" in lines[-3] and "accuracy" in lines[-3]
    summary = lines[-1]
    assert " SUCCEEDED (run " in summary, done.stdout
    return summary.rsplit("(run ", 1)[1].rstrip(")")


def test_validate_shows_a_bad_programs_diagnostics(env: dict[str, str], programs: Path) -> None:
    bad = programs / "bad.neural"
    done = neural(env, "validate", str(bad))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    first = lines.index(next(line for line in lines if line.startswith(f"{bad}:5:5: error:")))
    assert lines[first + 1 : first + 3] == ["        Output(2)", "        ^"]
    assert neural(env, "validate", str(programs / "digits.neural")).returncode == 0


def test_compile_writes_onnx_and_code(env: dict[str, str], programs: Path, tmp_path: Path) -> None:
    source = str(programs / "digits.neural")
    done = neural(env, "compile", source, "--backend", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    done = neural(env, "compile", source, "-b", "pytorch", "-o", str(tmp_path / "m.py"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["network"] == "CliDigits"
    assert "torch" in (tmp_path / "m.py").read_text()


def test_runs_list_json_has_the_run(env: dict[str, str], run_id: str) -> None:
    done = neural(env, "runs", "list", "--experiment", "cli-e2e", "--json")
    assert done.returncode == 0, done.stderr
    runs = {r["id"]: r for r in json.loads(done.stdout)}
    assert runs[run_id]["status"] == "RUN_STATUS_FINISHED"
    keys = {m["key"] for m in runs[run_id]["latest_metrics"]}
    assert {"loss", "accuracy", "val_accuracy"} <= keys


def test_plot_writes_a_png(env: dict[str, str], run_id: str, tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    done = neural(env, "plot", run_id, "--metric", "val_accuracy", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_deploy_then_predict_digits(env: dict[str, str], run_id: str, tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    done = neural(env, "deploy", run_id, "--name", "cli-digits")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployment cli-digits READY" in done.stdout
    digits = load_digits()
    np.save(tmp_path / "x.npy", (digits.data[:8] / 16.0).astype(np.float32))
    done = neural(env, "predict", "cli-digits", "--input", str(tmp_path / "x.npy"), "--json")
    assert done.returncode == 0, done.stderr
    output = json.loads(done.stdout)["outputs"][0]
    assert output["shape"] == [8, 10]
    assert np.asarray(output["data"]).shape == (8, 10)
    table = neural(env, "predict", "cli-digits", "--input", str(tmp_path / "x.npy"))
    assert table.returncode == 0 and "Predictions" in table.stdout
    listed = neural(env, "deployments", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "cli-digits" in [d["name"] for d in json.loads(listed.stdout)]
    deleted = neural(env, "deployments", "delete", "cli-digits")
    assert deleted.returncode == 0 and "deleting" in deleted.stdout, deleted.stderr

    def gone() -> bool:
        found = neural(env, "deployments", "get", "cli-digits")
        return found.returncode == 1 and "NOT_FOUND" in found.stderr

    until(gone, 60, "the deployment deleted", every=0.5)


def test_a_missing_key_is_named(env: dict[str, str]) -> None:
    without = {k: v for k, v in env.items() if k != "NEURAL_API_KEY"}
    done = neural(without, "runs", "list")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "neural: NEURAL_API_KEY is not set: create a key with "
        "`neural-keys create --name me --role admin` and export it"
    )
    wrong = neural({**env, "NEURAL_API_KEY": "nk_not_a_key"}, "runs", "list")
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr
