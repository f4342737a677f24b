"""The epoch loop, the same for both frameworks: each engine takes one optimizer step on a
batch of rows, validates, and saves or restores its state; `train` runs the epochs, writes the
checkpoint after each, and the final weights (and ONNX) at the end. The contract is in this
package's docstring."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from neural_dsl.backends import prepare
from neural_dsl.ir import Network

from ..datasets import Arrays
from .checkpoints import CHECKPOINT_FORMAT, atomic, fingerprint, sweep_partials
from .keras_engine import KerasEngine
from .spec import TrainSpec, check_spec, with_learning_rate
from .task import Task, batch_order, make_task
from .torch_engine import TorchEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based
    metrics: dict[str, float]  # loss, accuracy, and val_loss, val_accuracy when validating
    samples: int  # training samples seen in the epoch
    seconds: float  # wall time of the epoch, validation included

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "metrics": self.metrics,
            "samples": self.samples,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EpochResult:
        return cls(
            int(raw["epoch"]),
            {str(k): float(v) for k, v in raw["metrics"].items()},
            int(raw["samples"]),
            float(raw["seconds"]),
        )


class Cancelled(Exception):
    """`should_stop()` said so; the checkpoint of the last finished epoch is kept."""


class Callbacks(Protocol):
    def should_stop(self) -> bool:
        """Polled before every batch: a cancellation takes effect within one batch."""
        ...

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        """After every batch (`step` is 1-based within the epoch). Must be cheap."""
        ...

    def on_epoch(self, result: EpochResult) -> None:
        """After the epoch's checkpoint is durable. Not called for epochs restored from it."""
        ...


@dataclass
class TrainOutcome:
    history: list[EpochResult]  # every epoch, those restored from a checkpoint included
    resumed_from: int  # epochs restored from a checkpoint (0 = fresh start)
    device: str  # "cuda:0", "cpu", "mps", or TF's device ("/device:CPU:0")
    weights_path: Path  # torch state_dict (.pt) or Keras weights (.weights.h5)
    onnx_path: Path | None  # ONNX of the trained model (PyTorch backend only)
    notes: list[str] = field(default_factory=list)  # things the user should know


class Engine(Protocol):
    """What the loop needs of a framework (torch_engine.TorchEngine, keras_engine.KerasEngine)."""

    device: str
    checkpoint_name: str
    weights_name: str

    def placement(self) -> contextlib.AbstractContextManager[Any]: ...
    def begin_epoch(self, epoch: int) -> None: ...
    def step(self, rows: np.ndarray) -> float: ...
    def end_epoch(self) -> tuple[float, float]: ...
    def validate(self) -> tuple[float, float]: ...
    def save(self, path: Path, meta: dict[str, Any]) -> None: ...
    def load(self, path: Path, fingerprint: str) -> dict[str, Any] | None: ...
    def save_weights(self, path: Path) -> None: ...
    def export_onnx(self, path: Path) -> None:
        """Write the trained model to `path` as ONNX (streamed: see onnx_backend.Lowering)."""


def train(
    network: Network,
    hparams: Mapping[str, Any],
    data: Arrays,
    spec: TrainSpec,
    workdir: Path,
    callbacks: Callbacks,
    *,
    onnx: bool = True,
) -> TrainOutcome:
    """Train `network` (its HPO values fixed by `hparams`) on `data`, resuming from the
    checkpoint in `workdir` when there is one for the same network, data and settings
    (a checkpoint at or past `spec.epochs` only writes the final files again).
    `onnx=False` skips the ONNX export (a search's trials). Raises Cancelled,
    DatasetError (data that cannot feed the network), DSLError, or ValueError (settings)."""
    check_spec(spec)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sweep_partials(workdir)
    resolved, report = prepare(network, spec.backend, hparams)
    resolved = with_learning_rate(resolved, spec.learning_rate)
    if not resolved.loss:
        raise ValueError(f"network {network.name} declares no loss")
    task = make_task(resolved, report, data, spec)
    notes: list[str] = []
    factory = TorchEngine if spec.backend == "pytorch" else KerasEngine
    engine: Engine = factory(resolved, report, task, spec, notes)

    with engine.placement():
        ckpt = workdir / engine.checkpoint_name
        expected = fingerprint(resolved, task, spec)
        meta = engine.load(ckpt, expected) if ckpt.exists() else None
        history = [EpochResult.from_json(r) for r in meta["history"]] if meta else []
        resumed_from = len(history)
        _run_epochs(engine, task, spec, history, ckpt, expected, callbacks)

        weights = workdir / engine.weights_name
        # Keras insists on the ".weights.h5" ending, so the temporary file keeps it too.
        with atomic(weights, suffix="".join(weights.suffixes)) as tmp:
            engine.save_weights(tmp)
    onnx_path = None
    if onnx:
        try:
            with atomic(workdir / "model.onnx") as tmp:
                engine.export_onnx(tmp)
            onnx_path = workdir / "model.onnx"
        except Exception as exc:  # the trained weights stand; the job says what is missing
            log.warning("ONNX export failed", exc_info=True)
            notes.append(f"the ONNX export failed ({type(exc).__name__}: {exc}); weights are kept")
    return TrainOutcome(history, resumed_from, engine.device, weights, onnx_path, notes)


def _run_epochs(
    engine: Engine,
    task: Task,
    spec: TrainSpec,
    history: list[EpochResult],
    ckpt: Path,
    fingerprint: str,
    callbacks: Callbacks,
) -> None:
    for epoch in range(len(history) + 1, spec.epochs + 1):
        started = time.perf_counter()
        engine.begin_epoch(epoch)
        order = batch_order(spec, epoch, task.n_train)
        for step, at in enumerate(range(0, task.n_train, spec.batch_size), start=1):
            if callbacks.should_stop():
                raise Cancelled(f"cancelled in epoch {epoch} before batch {step}")
            loss = engine.step(order[at : at + spec.batch_size])
            callbacks.on_batch(epoch, step, loss)
        loss, acc = engine.end_epoch()
        metrics = {"loss": loss, "accuracy": acc}
        if task.n_val:
            if callbacks.should_stop():
                raise Cancelled(f"cancelled in epoch {epoch} before validation")
            metrics["val_loss"], metrics["val_accuracy"] = engine.validate()
        result = EpochResult(epoch, metrics, task.n_train, time.perf_counter() - started)
        history.append(result)
        meta = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "epoch": epoch,
            "history": [r.to_json() for r in history],
        }
        with atomic(ckpt) as tmp:
            engine.save(tmp, meta)
        callbacks.on_epoch(result)
