"""The trainer's training loop on both frameworks: it learns, resumes from its checkpoint as
if never stopped, stops within one batch when asked, validates its settings, and exports an
ONNX model that predicts what the trained PyTorch model does."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from neural_dsl import parse, propagate_shapes

from services.trainer import datasets, training
from services.trainer.datasets import Arrays, DatasetError
from services.trainer.training import Cancelled, EpochResult, TrainSpec, resolve_spec, train

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def program(
    loss: str = "sparse_categorical_crossentropy", output: str = 'Output(10, "softmax")'
) -> str:
    return f"""
network Digits {{
  input: (64)
  layers:
    Dense(32, "relu")
    Dropout(0.1)
    {output}
  loss: {loss}
  optimizer: Adam(learning_rate=0.01)
  train {{ epochs: 3 batch_size: 32 validation_split: 0.2 }}
}}
"""


NETWORK = parse(program()).network
NETWORK_PARAMS = propagate_shapes(NETWORK).total_params  # 64*32+32 + 32*10+10
METRICS = ["accuracy", "loss", "val_accuracy", "val_loss"]


class Recorder:
    """Callbacks that record what they saw and ask to stop after `stop_after` batches."""

    def __init__(self, stop_after: int | None = None, checkpoint: Path | None = None) -> None:
        self.stop_after = stop_after
        self.checkpoint = checkpoint
        self.batches: list[tuple[int, int, float]] = []
        self.epochs: list[EpochResult] = []
        self.checkpointed: list[int] = []  # the checkpoint's epoch when on_epoch ran

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.batches) >= self.stop_after

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        self.batches.append((epoch, step, loss))

    def on_epoch(self, result: EpochResult) -> None:
        self.epochs.append(result)
        if self.checkpoint is not None:
            import torch

            meta = torch.load(self.checkpoint, weights_only=True)["meta"]
            self.checkpointed.append(json.loads(meta)["epoch"])


@pytest.fixture(scope="module")
def digits() -> Arrays:
    return datasets.builtin("digits")


@pytest.fixture(scope="module")
def small(digits: Arrays) -> Arrays:
    return Arrays(digits.x[:400], digits.y[:400], digits.num_classes)


def spec(backend: str = "pytorch", **kw: object) -> TrainSpec:
    return dataclasses.replace(resolve_spec(NETWORK, backend, threads=2), **kw)


def same_state(a: Path, b: Path) -> bool:
    import torch

    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- PyTorch
@pytest.fixture(scope="module")
def torch_run(digits: Arrays, tmp_path_factory: pytest.TempPathFactory) -> training.TrainOutcome:
    return train(NETWORK, {}, digits, spec(), tmp_path_factory.mktemp("torch"), Recorder())


def test_pytorch_learns_digits_above_90_percent_validation_accuracy(
    torch_run: training.TrainOutcome,
) -> None:
    assert [r.epoch for r in torch_run.history] == [1, 2, 3]
    assert sorted(torch_run.history[-1].metrics) == METRICS
    assert torch_run.history[-1].metrics["val_accuracy"] > 0.9
    assert torch_run.history[-1].samples == 1438  # ceil(1797 * 0.8): the rest validates
    assert torch_run.resumed_from == 0
    assert torch_run.device == "cpu"
    assert torch_run.weights_path.name == "model.pt"


def test_a_class_sorted_dataset_validates_on_every_class(digits: Arrays, tmp_path: Path) -> None:
    order = np.argsort(digits.y, kind="stable")  # as an uploaded CSV sorted by label would be
    by_class = Arrays(digits.x[order], digits.y[order], digits.num_classes)
    outcome = train(NETWORK, {}, by_class, spec(epochs=2), tmp_path, Recorder())
    # unshuffled, the last 20% hold only 8s and 9s, never trained on: val_accuracy was 0.0
    assert outcome.history[-1].metrics["val_accuracy"] > 0.8


def test_onnx_export_predicts_what_the_trained_torch_model_predicts(
    torch_run: training.TrainOutcome, digits: Arrays
) -> None:
    import onnxruntime as ort
    import torch
    from neural_dsl.backends import build_torch

    model = build_torch(NETWORK)
    model.load_state_dict(torch.load(torch_run.weights_path, weights_only=True))
    x = digits.x[-100:].astype("float32")
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    assert torch_run.onnx_path is not None
    session = ort.InferenceSession(str(torch_run.onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the trained model, not a fresh one: it gets most of the held-out digits right
    assert (got.argmax(1) == digits.y[-100:]).mean() > 0.9


def test_pytorch_resume_gives_the_weights_of_an_uninterrupted_run(
    small: Arrays, tmp_path: Path
) -> None:
    whole = train(NETWORK, {}, small, spec(epochs=4), tmp_path / "a", Recorder(), onnx=False)
    first = train(NETWORK, {}, small, spec(epochs=2), tmp_path / "b", Recorder(), onnx=False)
    seen = Recorder()
    resumed = train(NETWORK, {}, small, spec(epochs=4), tmp_path / "b", seen, onnx=False)
    assert first.resumed_from == 0 and resumed.resumed_from == 2
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.history[:2] == first.history  # restored, not re-run
    assert [r.epoch for r in seen.epochs] == [3, 4]  # on_epoch only for the epochs it ran
    assert {e for e, _, _ in seen.batches} == {3, 4}
    assert [r.metrics for r in resumed.history] == [r.metrics for r in whole.history]
    assert same_state(resumed.weights_path, whole.weights_path)


def test_a_checkpoint_for_other_settings_is_not_resumed(small: Arrays, tmp_path: Path) -> None:
    train(NETWORK, {}, small, spec(epochs=1), tmp_path, Recorder(), onnx=False)
    other = train(NETWORK, {}, small, spec(epochs=1, seed=1), tmp_path, Recorder(), onnx=False)
    assert other.resumed_from == 0


def test_cancel_stops_within_one_batch_and_keeps_the_last_epoch_checkpoint(
    small: Arrays, tmp_path: Path
) -> None:
    per_epoch = 10  # 320 training rows (400 less 20%) in batches of 32
    stop = Recorder(stop_after=per_epoch + 3, checkpoint=tmp_path / "checkpoint.pt")
    with pytest.raises(Cancelled):
        train(NETWORK, {}, small, spec(epochs=3), tmp_path, stop, onnx=False)
    assert len(stop.batches) == per_epoch + 3  # no batch ran after should_stop said so
    assert stop.batches[-1][:2] == (2, 3)
    assert [r.epoch for r in stop.epochs] == [1]
    assert stop.checkpointed == [1]  # on_epoch came after the checkpoint was written
    assert not (tmp_path / "model.pt").exists()
    again = train(NETWORK, {}, small, spec(epochs=2), tmp_path, Recorder(), onnx=False)
    assert again.resumed_from == 1
    assert again.history[0] == stop.epochs[0]


KILLED = """
import os, signal, sys
from pathlib import Path
from services.trainer import datasets, training
from tests.services.test_trainer_training import NETWORK, Recorder, spec

class Killer(Recorder):
    def on_batch(self, epoch, step, loss):
        if (epoch, step) == (2, 3):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a dead worker

d = datasets.builtin("digits")
small = datasets.Arrays(d.x[:400], d.y[:400], d.num_classes)
training.train(NETWORK, {}, small, spec(epochs=3), Path(sys.argv[1]), Killer(), onnx=False)
"""


def test_a_worker_killed_mid_epoch_resumes_from_its_last_finished_epoch(
    small: Arrays, tmp_path: Path
) -> None:
    killed = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".checkpoint.pt.{dead.pid}.partial.tmp"  # a write it never finished
    stale.write_bytes(b"half")
    out = train(NETWORK, {}, small, spec(epochs=3), tmp_path, Recorder(), onnx=False)
    assert out.resumed_from == 1
    assert [r.epoch for r in out.history] == [1, 2, 3]
    assert not stale.exists()


def test_a_failed_onnx_export_keeps_the_weights_and_says_why(
    small: Arrays, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neural_dsl.backends

    def broken(*_: object) -> bytes:
        raise RuntimeError("no exporter today")

    monkeypatch.setattr(neural_dsl.backends, "lower_onnx", broken)
    out = train(NETWORK, {}, small, spec(epochs=1), tmp_path, Recorder())
    assert out.onnx_path is None
    assert any("no exporter today" in note for note in out.notes)
    import torch  # the weights are still written, and load as a state dict of the network's

    state = torch.load(out.weights_path, weights_only=True)
    params = sum(v.numel() for v in state.values())
    assert params == NETWORK_PARAMS


@pytest.mark.parametrize(
    ("loss", "output", "classes"),
    [
        ("categorical_crossentropy", 'Output(10, "softmax")', 10),  # one-hot targets
        ("binary_crossentropy", 'Output(1, "sigmoid")', 2),  # one sigmoid: threshold 0.5
    ],
)
def test_losses_that_compare_with_the_output_get_one_hot_or_scalar_targets(
    digits: Arrays, tmp_path: Path, loss: str, output: str, classes: int
) -> None:
    keep = digits.y < classes
    data = Arrays(digits.x[keep][:600], digits.y[keep][:600], classes)
    network = parse(program(loss, output)).network
    run_spec = resolve_spec(network, "pytorch", epochs=5, threads=2)
    out = train(network, {}, data, run_spec, tmp_path, Recorder(), onnx=False)
    assert out.history[-1].metrics["val_accuracy"] > 0.8  # chance is 0.1 and 0.5


# ---------------------------------------------------------------- TensorFlow
@pytest.fixture(scope="module")
def keras_runs(small: Arrays, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uninterrupted 2-epoch Keras run, and a 1-epoch run whose workdir a test resumes."""
    whole, part = tmp_path_factory.mktemp("keras_whole"), tmp_path_factory.mktemp("keras_part")
    train(NETWORK, {}, small, spec("tensorflow", epochs=2), whole, Recorder())
    train(NETWORK, {}, small, spec("tensorflow", epochs=1), part, Recorder())
    return {"whole": whole, "part": part}


def test_tensorflow_trains_and_reports_the_pytorch_metric_names(
    small: Arrays, keras_runs: dict[str, Path]
) -> None:
    out = train(NETWORK, {}, small, spec("tensorflow", epochs=2), keras_runs["whole"], Recorder())
    assert out.resumed_from == 2  # nothing left to run: the final files are written again
    assert [sorted(r.metrics) for r in out.history] == [METRICS, METRICS]
    assert out.history[-1].metrics["loss"] < out.history[0].metrics["loss"]
    assert out.weights_path.name == "model.weights.h5"
    import h5py  # Keras' weights file holds every weight of the network (and the optimizer's)

    with h5py.File(out.weights_path) as f:
        sizes: list[int] = []
        f["layers"].visititems(
            lambda _, obj: sizes.append(obj.size) if isinstance(obj, h5py.Dataset) else None
        )
    assert sum(sizes) == NETWORK_PARAMS
    assert out.device.endswith("CPU:0")


def test_a_keras_run_exports_onnx_that_predicts_what_the_keras_model_predicts(
    small: Arrays, keras_runs: dict[str, Path]
) -> None:
    import onnxruntime as ort
    from neural_dsl.backends import build_keras

    out = train(NETWORK, {}, small, spec("tensorflow", epochs=2), keras_runs["whole"], Recorder())
    assert out.onnx_path is not None
    assert not [n for n in out.notes if "ONNX" in n]
    model = build_keras(NETWORK, compile_model=False)
    model.load_weights(str(out.weights_path))
    x = small.x[:50].astype("float32")
    expected = model.predict(x, verbose=0)
    session = ort.InferenceSession(str(out.onnx_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tensorflow_resumes_at_the_next_epoch_like_an_uninterrupted_run(
    small: Arrays, keras_runs: dict[str, Path], tmp_path: Path
) -> None:
    workdir = tmp_path / "part"
    shutil.copytree(keras_runs["part"], workdir)
    seen = Recorder()
    out = train(NETWORK, {}, small, spec("tensorflow", epochs=2), workdir, seen)
    whole = train(NETWORK, {}, small, spec("tensorflow", epochs=2), keras_runs["whole"], Recorder())
    assert out.resumed_from == 1
    assert [r.epoch for r in seen.epochs] == [2]
    got = [v for r in out.history for v in r.metrics.values()]
    expected = [v for r in whole.history for v in r.metrics.values()]
    assert got == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- settings and data
def test_spec_takes_the_dsl_train_block_then_the_overrides() -> None:
    s = resolve_spec(NETWORK, "tensorflow")
    assert (s.epochs, s.batch_size, s.validation_split, s.learning_rate) == (3, 32, 0.2, None)
    s = resolve_spec(NETWORK, "pytorch", epochs=7, batch_size=8, learning_rate=0.1, seed=3)
    assert (s.epochs, s.batch_size, s.learning_rate, s.seed) == (7, 8, 0.1, 3)
    bare = parse('network B {\n input: (4)\n layers:\n  Output(2, "softmax")\n loss: mse\n}')
    s = resolve_spec(bare.network, "pytorch")
    assert (s.epochs, s.batch_size, s.validation_split, s.shuffle) == (1, 32, 0.0, True)


def test_spec_reads_training_hyperparameters_by_name() -> None:
    text = program().replace("epochs: 3", "epochs: HPO(choice(2, 4))")
    network = parse(text).network
    assert resolve_spec(network, "pytorch", hparams={"train.epochs": 4}).epochs == 4
    with pytest.raises(ValueError, match=r"train\.epochs"):
        resolve_spec(network, "pytorch")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": 0}, "epochs must be"),
        ({"epochs": 10_001}, "epochs must be"),
        ({"epochs": 2.5}, "epochs must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"batch_size": 65_537}, "batch_size must be"),
        ({"validation_split": 1.0}, "validation_split must be"),
        ({"validation_split": -0.1}, "validation_split must be"),
        ({"learning_rate": 0.0}, "learning_rate must be"),
        ({"learning_rate": float("nan")}, "learning_rate must be"),
        ({"threads": 0}, "threads must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_spec_rejects_out_of_range_settings(override: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_spec(NETWORK, "pytorch", **override)  # type: ignore[arg-type]


def test_spec_rejects_an_untrainable_backend_or_a_network_without_loss() -> None:
    with pytest.raises(ValueError, match="backend 'onnx'"):
        resolve_spec(NETWORK, "onnx")
    no_loss = parse('network B {\n input: (4)\n layers:\n  Output(2, "softmax")\n}').network
    with pytest.raises(ValueError, match="declares no loss"):
        resolve_spec(no_loss, "pytorch")


def test_learning_rate_override_replaces_the_rate_or_the_schedules_initial_rate() -> None:
    plain = training.with_learning_rate(NETWORK, 0.5)
    assert plain.optimizer is not None and plain.optimizer.get("learning_rate") == 0.5
    text = program().replace("0.01)", "ExponentialDecay(0.01, 100, 0.9))")
    scheduled = training.with_learning_rate(parse(text).network, 0.5)
    assert scheduled.optimizer is not None
    schedule = scheduled.optimizer.get("learning_rate")
    assert schedule.type == "ExponentialDecay"
    assert [p.value for p in schedule.params] == [0.5, 100, 0.9]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (Arrays(np.zeros((10, 5), "float32"), np.zeros(10, "int64"), 2), "shape"),
        (Arrays(np.zeros((10, 64), "float32"), np.zeros(10, "int64"), 12), "12 classes"),
        (Arrays(np.zeros((10, 64), "float32"), np.full(10, 3), 3), "0..2"),
        (Arrays(np.zeros((10, 64), "float32"), np.full(10, 0.5), 2), "whole numbers"),
        (Arrays(np.zeros((1, 64), "float32"), np.zeros(1, "int64"), 2), "none to validate"),
    ],
)
def test_data_that_cannot_feed_the_network_is_a_dataset_error(
    data: Arrays, message: str, tmp_path: Path
) -> None:
    with pytest.raises(DatasetError, match=message):
        train(NETWORK, {}, data, spec(), tmp_path, Recorder(), onnx=False)


def test_importing_the_training_module_loads_no_framework() -> None:
    code = (
        "import sys, services.trainer.training\n"
        "print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
