"""The data as the network takes it: inputs shaped and typed for its first layer, the loss's
targets and the class ids, shuffled and split for validation; and the order its training rows
are drawn in, fixed by (seed, epoch) so a resumed run sees the batches an uninterrupted one
would."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from neural_dsl.backends.common import first_layer
from neural_dsl.ir import Network
from neural_dsl.shapes import ShapeReport, fmt

from ..datasets import Arrays, DatasetError, fit_to_input, split_order
from .spec import TrainSpec

# Losses that take class ids; every other loss compares the output with a target of its shape.
SPARSE_LOSSES = frozenset({"sparse_categorical_crossentropy", "nll"})


@dataclass(frozen=True)
class Task:
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


def make_task(network: Network, report: ShapeReport, data: Arrays, spec: TrainSpec) -> Task:
    """`data` made into the network's `Task`; DatasetError when it cannot feed the network."""
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
    return Task(x, target, ids, n_train, binary, loss)


def train_rows(samples: int, validation_split: float) -> int:
    """How many of `samples` rows train; the rest validate (a stratified share, see
    `datasets.split_order`)."""
    return math.ceil(samples * (1 - validation_split)) if validation_split else samples


def epoch_seed(seed: int, epoch: int) -> int:
    """The framework seed of one epoch (dropout masks): the same whenever the epoch is run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


def batch_order(spec: TrainSpec, epoch: int, n: int) -> np.ndarray:
    """The training rows of `epoch` in batch order: the same whenever the epoch is run."""
    if not spec.shuffle:
        return np.arange(n)
    return np.random.default_rng([spec.seed, epoch]).permutation(n)
