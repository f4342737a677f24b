"""The TensorFlow/Keras engine: one optimizer step on a batch of rows, validation, and the
checkpoint of every model and optimizer variable (dropout seed state included). TensorFlow and
Keras are imported when an engine is made, so importing this module is cheap."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from neural_dsl.ir import Network
from neural_dsl.shapes import ShapeReport

from .checkpoints import usable
from .spec import TrainSpec
from .task import SPARSE_LOSSES, Task

log = logging.getLogger(__name__)


class KerasEngine:
    checkpoint_name = "checkpoint.npz"
    weights_name = "model.weights.h5"

    def __init__(
        self, network: Network, report: ShapeReport, task: Task, spec: TrainSpec, notes: list[str]
    ) -> None:
        import tensorflow as tf

        if spec.threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
            except RuntimeError:  # TF already started in this process: its pool stays
                log.info("TensorFlow is initialised; intra-op threads stay as they are")
        import keras
        from neural_dsl.backends import build_keras

        self.tf, self.keras, self.task, self.spec = tf, keras, task, spec
        self.network, self.report = network, report
        self.device = _tf_device(tf, network.execution.device, notes)
        with tf.device(self.device):
            keras.utils.set_random_seed(spec.seed)
            model = build_keras(network)
            model.compile(
                optimizer=model.optimizer, loss=model.loss, metrics=[_keras_accuracy(task)]
            )
        self.model = model
        x = task.x.astype("int32") if task.x.dtype == np.int64 else task.x
        self.x, self.target = x, task.target
        self._sums = [0.0, 0.0, 0]

    def placement(self) -> contextlib.AbstractContextManager[Any]:
        return self.tf.device(self.device)

    def begin_epoch(self, epoch: int) -> None:
        self._sums = [0.0, 0.0, 0]

    def step(self, rows: np.ndarray) -> float:
        logs = self.model.train_on_batch(self.x[rows], self.target[rows], return_dict=True)
        loss, n = float(logs["loss"]), len(rows)
        self._sums[0] += loss * n
        self._sums[1] += float(logs["accuracy"]) * n
        self._sums[2] += n
        return loss

    def end_epoch(self) -> tuple[float, float]:
        loss, acc, n = self._sums
        return loss / n, acc / n

    def validate(self) -> tuple[float, float]:
        n0 = self.task.n_train
        logs = self.model.evaluate(
            self.x[n0:],
            self.target[n0:],
            batch_size=self.spec.batch_size,
            verbose=0,
            return_dict=True,
        )
        return float(logs["loss"]), float(logs["accuracy"])

    def _variables(self) -> tuple[list[Any], list[Any]]:
        model = self.model
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # Weights, then the rest (normalisation statistics, dropout seed state).
        return [*model.trainable_variables, *model.non_trainable_variables], list(
            model.optimizer.variables
        )

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        weights, opt = self._variables()
        arrays = {f"w{i}": np.asarray(v.numpy()) for i, v in enumerate(weights)}
        arrays.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(opt)})
        with open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    def load(self, path: Path, fingerprint: str) -> dict[str, Any] | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if not usable(meta, fingerprint, path):
                    return None
                weights, opt = self._variables()
                names = [f"w{i}" for i in range(len(weights))] + [f"o{i}" for i in range(len(opt))]
                if sorted(names) != sorted(k for k in z.files if k != "meta"):
                    raise ValueError("the checkpoint holds other variables than this model")
                for name, var in zip(names, [*weights, *opt], strict=True):
                    var.assign(z[name])
        except Exception:  # an unreadable checkpoint costs the epochs it held, not the job
            log.warning("checkpoint %s cannot be read: starting afresh", path, exc_info=True)
            return None
        return meta

    def save_weights(self, path: Path) -> None:
        self.model.save_weights(str(path))

    def export_onnx(self, path: Path) -> None:
        """The trained Keras weights under the PyTorch state_dict's names, lowered to ONNX
        (the graph is the same for both frameworks: see neural_dsl.backends.keras_weights)."""
        from neural_dsl.backends import lower_onnx
        from neural_dsl.backends.keras_weights import state_dict_from_keras

        weights = state_dict_from_keras(self.network, self.report, self.model)
        lowered = lower_onnx(self.network, self.report, weights)
        with open(path, "wb") as f:
            lowered.write(f)


def _tf_device(tf: Any, requested: str, notes: list[str]) -> str:
    want = requested.lower()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpu = tf.config.list_logical_devices("CPU")[0].name
    if want == "cpu":
        return cpu
    if want == "auto":
        return gpus[0] if gpus else cpu
    if want.startswith(("gpu", "cuda")):
        index = int(want.partition(":")[2] or 0)
        if index < len(gpus):
            return gpus[index]
    notes.append(f"execution device {requested!r} is not available here: trained on the CPU")
    return cpu


def _keras_accuracy(task: Task) -> Callable[[Any, Any], Any]:
    """Keras metric with the same meaning as the PyTorch path's: argmax match, or a 0.5
    threshold for one sigmoid output."""
    import keras

    ops = keras.ops

    def accuracy(y_true: Any, y_pred: Any) -> Any:
        if task.binary:
            guess = ops.cast(ops.reshape(y_pred, (-1,)) > 0.5, "int32")
            truth = ops.cast(ops.reshape(y_true, (-1,)) > 0.5, "int32")
        else:
            guess = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            truth = (
                ops.cast(ops.reshape(y_true, (-1,)), "int32")
                if task.loss in SPARSE_LOSSES
                else ops.cast(ops.argmax(y_true, axis=-1), "int32")
            )
        return ops.cast(ops.equal(guess, truth), "float32")

    return accuracy
