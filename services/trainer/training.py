"""The training loop: a DSL network, class-labelled arrays and settings -> trained weights.

One epoch loop serves both frameworks; each framework is an engine that knows how to take
one optimizer step on a batch of rows, validate, and save or restore its state. So the
contract is the same for PyTorch and TensorFlow/Keras:

- `should_stop()` is polled before every batch; a stop raises `Cancelled` and leaves the
  checkpoint of the last finished epoch as it was.
- After every epoch the whole state (weights, optimizer and schedule state, epoch, history)
  is written to one checkpoint file in `workdir` (temporary file, fsync, `os.replace`), and
  only then is `on_epoch` called. A later `train` on the same workdir, data and settings
  resumes from it, so a worker killed mid-epoch and redelivered repeats at most one epoch.
- Batches are drawn in an order fixed by (seed, epoch), and PyTorch's generator is re-seeded
  from (seed, epoch) at the start of each epoch (Keras' dropout seed state is part of the
  checkpointed variables), so a resumed run sees the batches and dropout masks an
  uninterrupted one would. On PyTorch the result is the same to the bit.

Frameworks are imported on the path that needs them, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from neural_dsl.backends import prepare
from neural_dsl.backends.common import first_layer, settings
from neural_dsl.ir import HPO, Network, Optimizer, Param, Schedule, network_to_json
from neural_dsl.shapes import ShapeReport, fmt

from .datasets import Arrays, DatasetError, fit_to_input, split_order

log = logging.getLogger(__name__)

TRAIN_BACKENDS = ("pytorch", "tensorflow")
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_THREADS = 1024
# Keras' own defaults for what a `train { }` block leaves out.
DEFAULT_EPOCHS = 1
DEFAULT_BATCH_SIZE = 32
# Losses that take class ids; every other loss compares the output with a target of its shape.
SPARSE_LOSSES = frozenset({"sparse_categorical_crossentropy", "nll"})
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------- public types
@dataclass(frozen=True)
class TrainSpec:
    """Resolved settings; the worker fills them from the request's overrides and the DSL."""

    backend: str  # "pytorch" | "tensorflow"
    epochs: int
    batch_size: int
    learning_rate: float | None  # overrides the optimizer's (initial) rate when set
    validation_split: float  # 0 = no validation
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads / TF intra-op threads when set
    shuffle: bool = True  # shuffle the training rows each epoch (the DSL's `shuffle`)


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


# ---------------------------------------------------------------- settings
def resolve_spec(
    network: Network,
    backend: str,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    validation_split: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> TrainSpec:
    """The settings of one training run: the overrides given (None = not given), else the
    DSL's `train { }` block (its HPO values taken from `hparams` by name), else Keras'
    defaults. Raises ValueError with a message meant for the user."""
    if not network.loss:
        raise ValueError(
            f"network {network.name} declares no loss: add one, e.g. "
            "`loss: sparse_categorical_crossentropy`"
        )
    t = network.training
    hp = hparams or {}

    def pick(override: Any, declared: Any, name: str, default: Any) -> Any:
        if override is not None:
            return override
        if isinstance(declared, HPO):
            if declared.name not in hp:
                raise ValueError(
                    f"training.{name} is the hyperparameter '{declared.name}': give it a value"
                )
            return hp[declared.name]
        return default if declared is None else declared

    spec = TrainSpec(
        backend=backend,
        epochs=pick(epochs, t.epochs, "epochs", DEFAULT_EPOCHS),
        batch_size=pick(batch_size, t.batch_size, "batch_size", DEFAULT_BATCH_SIZE),
        learning_rate=learning_rate,
        validation_split=pick(validation_split, t.validation_split, "validation_split", 0.0),
        seed=seed,
        threads=threads,
        shuffle=t.shuffle is not False,
    )
    _check_spec(spec)
    return spec


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def _check_spec(spec: TrainSpec) -> None:
    if spec.backend not in TRAIN_BACKENDS:
        raise ValueError(f"cannot train with backend {spec.backend!r}: use pytorch or tensorflow")
    if not _is_int(spec.epochs) or not 1 <= spec.epochs <= MAX_EPOCHS:
        raise ValueError(f"epochs must be a whole number from 1 to {MAX_EPOCHS}, got {spec.epochs}")
    if not _is_int(spec.batch_size) or not 1 <= spec.batch_size <= MAX_BATCH_SIZE:
        raise ValueError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH_SIZE}, got {spec.batch_size}"
        )
    split = spec.validation_split
    if not _is_real(split) or not 0 <= split < 1:
        raise ValueError(f"validation_split must be at least 0 and below 1, got {split}")
    lr = spec.learning_rate
    if lr is not None and (not _is_real(lr) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"learning_rate must be a positive number, got {lr}")
    if not _is_int(spec.seed) or not 0 <= spec.seed < 2**63:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1, got {spec.seed}")
    if spec.threads is not None and (
        not _is_int(spec.threads) or not 1 <= spec.threads <= MAX_THREADS
    ):
        raise ValueError(
            f"threads must be a whole number from 1 to {MAX_THREADS}, got {spec.threads}"
        )


def with_learning_rate(network: Network, rate: float | None) -> Network:
    """The network with its optimizer's rate (a schedule's initial rate) set to `rate`.
    Done on the IR, so both backends and the ONNX export see one network."""
    if rate is None:
        return network
    opt = network.optimizer or Optimizer("Adam")
    current = opt.get("learning_rate")
    if isinstance(current, Schedule):
        params = tuple(
            replace(p, value=float(rate)) if p.name == "initial_learning_rate" else p
            for p in current.params
        )
        value: Any = replace(current, params=params)
    else:
        value = float(rate)
    others = tuple(p for p in opt.params if p.name != "learning_rate")
    loc = opt.loc
    return replace(
        network, optimizer=replace(opt, params=(Param("learning_rate", value, loc), *others))
    )


# ---------------------------------------------------------------- data
@dataclass(frozen=True)
class _Task:
    """The data as the network takes it: inputs, loss targets and class ids, split."""

    x: np.ndarray
    target: np.ndarray  # what the loss compares the output with
    ids: np.ndarray  # class ids, for accuracy
    n_train: int
    binary: bool  # one sigmoid output: accuracy thresholds at 0.5
    loss: str

    @property
    def n_val(self) -> int:
        return len(self.x) - self.n_train


def _task(network: Network, report: ShapeReport, data: Arrays, spec: TrainSpec) -> _Task:
    if len(network.inputs) != 1:
        raise DatasetError(
            f"network {network.name} has {len(network.inputs)} inputs; "
            "a training dataset feeds exactly one"
        )
    inp = network.inputs[0]
    x, y = np.asarray(data.x), np.asarray(data.y)
    if x.ndim < 1 or y.shape != (len(x),):
        raise DatasetError(f"the data has {len(x)} samples but labels of shape {y.shape}")
    x = fit_to_input(Arrays(x, y, data.num_classes), inp.sample_shape, inp.name).x
    first = first_layer(network, inp.name)
    x = x.astype("int64" if first is not None and first.type == "Embedding" else "float32")

    whole = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0))
    )
    if not whole:
        raise DatasetError("labels must be class ids (whole numbers)")
    ids = y.astype("int64")
    if len(ids) and (ids.min() < 0 or ids.max() >= data.num_classes):
        raise DatasetError(f"labels must lie in 0..{data.num_classes - 1}")
    out = report.output_shape
    if len(out) != 1 or out[0] is None:
        raise DatasetError(
            f"network {network.name} outputs {fmt(out)} per sample; training on class labels "
            'needs one score per class, e.g. end with Output(units, "softmax")'
        )
    units = out[0]
    loss = network.loss or ""
    binary = units == 1 and loss not in SPARSE_LOSSES
    if binary:
        if data.num_classes > 2:
            raise DatasetError(
                f"the data has {data.num_classes} classes but the network has one output unit"
            )
        target = ids.astype("float32").reshape(-1, 1)
    else:
        if units < data.num_classes:
            raise DatasetError(
                f"the data has {data.num_classes} classes but the network outputs {units} scores"
            )
        target = ids if loss in SPARSE_LOSSES else np.eye(units, dtype="float32")[ids]

    n = len(x)
    n_train = train_rows(n, spec.validation_split)
    if n_train == 0:
        raise DatasetError(f"validation_split {spec.validation_split} leaves no training data")
    if spec.validation_split and n_train == n:
        raise DatasetError(
            f"validation_split {spec.validation_split} of {n} samples leaves none to validate on"
        )
    # Shuffled (seeded) and stratified before the split: an uploaded file sorted by class would
    # otherwise validate on classes the network never trained on.
    if n_train < n:
        order = split_order(ids, n - n_train, spec.seed)
        x, target, ids = x[order], target[order], ids[order]
    return _Task(x, target, ids, n_train, binary, loss)


def train_rows(samples: int, validation_split: float) -> int:
    """How many of `samples` rows train; the rest validate (a stratified share, see
    `datasets.split_order`)."""
    return math.ceil(samples * (1 - validation_split)) if validation_split else samples


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def _order(spec: TrainSpec, epoch: int, n: int) -> np.ndarray:
    """The training rows of `epoch` in batch order: the same whenever the epoch is run."""
    if not spec.shuffle:
        return np.arange(n)
    return np.random.default_rng([spec.seed, epoch]).permutation(n)


def _fingerprint(network: Network, data: _Task, spec: TrainSpec) -> str:
    """What a checkpoint must agree on to be resumed (the epoch count may grow)."""
    h = hashlib.blake2b(digest_size=16)
    fixed = {
        "format": CHECKPOINT_FORMAT,
        "network": network_to_json(network),
        "spec": [spec.backend, spec.batch_size, spec.validation_split, spec.seed, spec.shuffle],
        "data": [list(data.x.shape), str(data.x.dtype), data.n_train],
    }
    h.update(json.dumps(fixed, sort_keys=True).encode())
    for a in (data.x, data.target):
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


# ---------------------------------------------------------------- files
@contextlib.contextmanager
def _atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; once written, fsync it and move it into place,
    so readers (and a resumed worker) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)


def _sweep_partials(workdir: Path) -> None:
    """Remove the temporary files of writers that died mid-write (a SIGKILLed worker)."""
    for tmp in workdir.glob(".*.partial*"):
        found = re.search(r"\.(\d+)\.partial", tmp.name)
        if found and int(found[1]) != os.getpid() and not _alive(int(found[1])):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


# ---------------------------------------------------------------- engines
class _Engine(Protocol):
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
    def export_onnx(self) -> bytes | None: ...


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
    _check_spec(spec)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _sweep_partials(workdir)
    resolved, report = prepare(network, spec.backend, hparams)
    resolved = with_learning_rate(resolved, spec.learning_rate)
    if not resolved.loss:
        raise ValueError(f"network {network.name} declares no loss")
    task = _task(resolved, report, data, spec)
    notes: list[str] = []
    factory = _TorchEngine if spec.backend == "pytorch" else _KerasEngine
    engine: _Engine = factory(resolved, report, task, spec, notes)

    with engine.placement():
        ckpt = workdir / engine.checkpoint_name
        fingerprint = _fingerprint(resolved, task, spec)
        meta = engine.load(ckpt, fingerprint) if ckpt.exists() else None
        history = [EpochResult.from_json(r) for r in meta["history"]] if meta else []
        resumed_from = len(history)
        _run_epochs(engine, task, spec, history, ckpt, fingerprint, callbacks)

        weights = workdir / engine.weights_name
        # Keras insists on the ".weights.h5" ending, so the temporary file keeps it too.
        with _atomic(weights, suffix="".join(weights.suffixes)) as tmp:
            engine.save_weights(tmp)
    onnx_path = None
    if onnx:
        try:
            blob = engine.export_onnx()
        except Exception as exc:  # the trained weights stand; the job says what is missing
            log.warning("ONNX export failed", exc_info=True)
            notes.append(f"the ONNX export failed ({type(exc).__name__}: {exc}); weights are kept")
            blob = None
        if blob is not None:
            onnx_path = workdir / "model.onnx"
            with _atomic(onnx_path) as tmp:
                tmp.write_bytes(blob)
    return TrainOutcome(history, resumed_from, engine.device, weights, onnx_path, notes)


def _run_epochs(
    engine: _Engine,
    task: _Task,
    spec: TrainSpec,
    history: list[EpochResult],
    ckpt: Path,
    fingerprint: str,
    callbacks: Callbacks,
) -> None:
    for epoch in range(len(history) + 1, spec.epochs + 1):
        started = time.perf_counter()
        engine.begin_epoch(epoch)
        order = _order(spec, epoch, task.n_train)
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
        with _atomic(ckpt) as tmp:
            engine.save(tmp, meta)
        callbacks.on_epoch(result)


def _usable(meta: Mapping[str, Any], fingerprint: str, path: Path) -> bool:
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s is for other data or settings: starting afresh", path)
        return False
    return True


class _TorchEngine:
    checkpoint_name = "checkpoint.pt"
    weights_name = "model.pt"

    def __init__(
        self, network: Network, report: ShapeReport, task: _Task, spec: TrainSpec, notes: list[str]
    ) -> None:
        import torch
        from neural_dsl.backends import build_torch
        from neural_dsl.runtime.torch_training import (
            keras_loss,
            make_optimizer,
            make_scheduler,
            train_step,
        )

        self.torch, self.network, self.report, self.task, self.spec = (
            torch,
            network,
            report,
            task,
            spec,
        )
        self.train_step = train_step
        if spec.threads:
            torch.set_num_threads(spec.threads)
        dev = _torch_device(network.execution.device, notes)
        self.device = f"{dev.type}:{dev.index or 0}" if dev.type == "cuda" else dev.type
        torch.manual_seed(spec.seed)
        model = build_torch(network)
        # A layer placed with `@ device` keeps its own device; the rest follow the run's.
        self.placed = any(layer.device for layer in network.walk())
        self.model = model if self.placed else model.to(dev)
        self.dev = dev
        opt = settings(network)["optimizer"]
        self.optimizer = make_optimizer(self.model.parameters(), opt)
        self.scheduler = make_scheduler(self.optimizer, opt)
        self.clipnorm = opt["params"].get("clipnorm")
        self.clipvalue = opt["params"].get("clipvalue")
        self.loss_fn = keras_loss(task.loss)
        self.pred: Any = None
        # Small datasets go to the accelerator once; large ones a batch at a time.
        resident = dev.type != "cpu" and task.x.nbytes + task.target.nbytes < 1 << 29
        self.data_dev = dev if resident else torch.device("cpu")
        self.x = torch.from_numpy(task.x).to(self.data_dev)
        self.ids = torch.from_numpy(task.ids).to(self.data_dev)
        sparse = task.target is task.ids
        self.target = self.ids if sparse else torch.from_numpy(task.target).to(self.data_dev)
        self._begin_sums()

    def _begin_sums(self) -> None:
        self.loss_sum, self.seen = 0.0, 0
        self.hits = self.torch.zeros((), dtype=self.torch.int64, device=self.dev)

    def placement(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def begin_epoch(self, epoch: int) -> None:
        self.torch.manual_seed(_epoch_seed(self.spec.seed, epoch))  # dropout masks
        self._begin_sums()

    def _batch(self, rows: np.ndarray) -> tuple[Any, Any, Any]:
        idx = self.torch.from_numpy(rows)
        if self.data_dev.type != "cpu":
            idx = idx.to(self.data_dev)
        x, ids = self.x.index_select(0, idx), self.ids.index_select(0, idx)
        target = ids if self.target is self.ids else self.target.index_select(0, idx)
        if self.data_dev != self.dev:
            x, target, ids = (t.to(self.dev, non_blocking=True) for t in (x, target, ids))
        return x, target, ids

    def _hits(self, pred: Any, ids: Any) -> Any:
        guess = (pred.reshape(-1) > 0.5).long() if self.task.binary else pred.argmax(-1)
        if self.placed:
            guess = guess.to(ids.device)
        return (guess == ids).sum()

    def _loss(self, pred: Any, y: Any) -> Any:
        self.pred = pred  # the batch's predictions, for the epoch's accuracy
        return self.loss_fn(pred, y.to(pred.device) if self.placed else y)

    def step(self, rows: np.ndarray) -> float:
        x, target, ids = self._batch(rows)
        loss = self.train_step(
            self.model,
            self.optimizer,
            self._loss,
            x,
            target,
            self.scheduler,
            self.clipnorm,
            self.clipvalue,
        )
        self.hits += self._hits(self.pred.detach(), ids)
        self.pred = None
        self.loss_sum += loss * len(rows)
        self.seen += len(rows)
        return loss

    def end_epoch(self) -> tuple[float, float]:
        return self.loss_sum / self.seen, int(self.hits) / self.seen

    def validate(self) -> tuple[float, float]:
        torch, n0, bs = self.torch, self.task.n_train, self.spec.batch_size
        self.model.eval()
        loss_sum, hits = 0.0, torch.zeros((), dtype=torch.int64, device=self.dev)
        with torch.no_grad():
            for at in range(n0, len(self.task.x), bs):
                x, target, ids = self._batch(np.arange(at, min(at + bs, len(self.task.x))))
                pred = self.model(x)
                loss_sum += float(self._loss(pred, target)) * len(ids)
                hits += self._hits(pred, ids)
        n = self.task.n_val
        return loss_sum / n, int(hits) / n

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        state = {
            "meta": json.dumps(meta),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
        }
        self.torch.save(state, path)

    def load(self, path: Path, fingerprint: str) -> dict[str, Any] | None:
        try:
            state = self.torch.load(path, map_location=self.dev, weights_only=True)
            meta = json.loads(state["meta"])
            if not _usable(meta, fingerprint, path):
                return None
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except Exception:  # an unreadable checkpoint costs the epochs it held, not the job
            log.warning("checkpoint %s cannot be read: starting afresh", path, exc_info=True)
            return None
        return meta

    def save_weights(self, path: Path) -> None:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        self.torch.save(state, path)

    def export_onnx(self) -> bytes | None:
        from neural_dsl.backends import export_onnx

        model = self.model if self.placed else self.model.to("cpu")
        try:
            return export_onnx(self.network, self.report, model)
        finally:
            if not self.placed:
                self.model.to(self.dev)


def _torch_device(requested: str, notes: list[str]) -> Any:
    import torch

    want = requested.lower()
    if want == "cpu":
        return torch.device("cpu")
    cuda = torch.cuda.is_available()
    if want == "auto":
        return torch.device("cuda:0" if cuda else "cpu")
    if want.startswith(("gpu", "cuda")):
        index = int(want.partition(":")[2] or 0)
        if cuda and index < torch.cuda.device_count():
            return torch.device(f"cuda:{index}")
    elif want == "mps" and torch.backends.mps.is_available():
        return torch.device("mps")
    notes.append(f"execution device {requested!r} is not available here: trained on the CPU")
    return torch.device("cpu")


class _KerasEngine:
    checkpoint_name = "checkpoint.npz"
    weights_name = "model.weights.h5"

    def __init__(
        self, network: Network, report: ShapeReport, task: _Task, spec: TrainSpec, notes: list[str]
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
        self.device = _tf_device(tf, network.execution.device, notes)
        notes.append("ONNX export is made from the PyTorch backend; this run trained Keras")
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
                if not _usable(meta, fingerprint, path):
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

    def export_onnx(self) -> bytes | None:
        return None


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


def _keras_accuracy(task: _Task) -> Callable[[Any, Any], Any]:
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
