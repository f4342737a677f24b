"""The settings of one training run: `TrainSpec`, resolved from the request's overrides, the
DSL's `train { }` block and Keras' defaults, and checked with messages meant for the user."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from neural_dsl.ir import HPO, Network, Optimizer, Param, Schedule

TRAIN_BACKENDS = ("pytorch", "tensorflow")
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_THREADS = 1024
# Keras' own defaults for what a `train { }` block leaves out.
DEFAULT_EPOCHS = 1
DEFAULT_BATCH_SIZE = 32


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
    check_spec(spec)
    return spec


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


def check_spec(spec: TrainSpec) -> None:
    """ValueError, with a message meant for the user, for the first setting out of range."""
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
