"""A training request, as stored on its job, and the checks both the RPC and the worker run.

The RPC checks everything it can cheaply (program, hyperparameters, settings, dataset shape)
so a wrong request fails at submit time with INVALID_ARGUMENT; the worker runs the same
checks again on the stored request and then loads the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from neural_dsl import Limits, parse, propagate_shapes
from neural_dsl.backends import prepare
from neural_dsl.ir import HPO, Choice, Network, Range
from neural_dsl.limits import training_bytes

from . import datasets
from .datasets import Arrays, DatasetError
from .training import DEFAULT_BATCH_SIZE

BUILTIN = ("digits", "iris", "wine", "breast_cancer")
DEFAULT_EXPERIMENT = "Default"


@dataclass
class TrainingRequest:
    """What a training (or search) job runs; JSON on the job row."""

    source: str
    backend: str  # "pytorch" | "tensorflow"
    dataset: dict[str, Any]  # {"builtin": name} | {"synthetic": {...}} | {"dataset_id": id}
    network: str = ""
    model_id: str = ""
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    validation_split: float | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    experiment: str = DEFAULT_EXPERIMENT
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    # hyperparameter search only
    n_trials: int = 0
    objective: str = ""
    direction: str = "maximize"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingRequest:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def dataset_label(self) -> str:
        d = self.dataset
        if "builtin" in d:
            return str(d["builtin"])
        if "synthetic" in d:
            s = d["synthetic"]
            return f"synthetic(n={s['num_samples']}, classes={s['num_classes']}, seed={s['seed']})"
        return f"datasets/{d['dataset_id']}"


def network_of(source: str, name: str, limits: Limits) -> Network:
    """The program's network (by name when it declares several). Raises DSLError or
    DatasetError (used here for 'no such network', which is the caller's mistake)."""
    program = parse(source, limits)
    if name:
        try:
            return program.get(name)
        except KeyError:
            names = ", ".join(n.name for n in program.networks)
            raise DatasetError(f"the program has no network {name!r} (it has: {names})") from None
    if len(program.networks) != 1:
        names = ", ".join(n.name for n in program.networks)
        raise DatasetError(f"the program declares several networks ({names}): name one")
    return program.network


def input_shape(network: Network) -> tuple[int | None, ...]:
    if len(network.inputs) != 1:
        raise DatasetError(
            f"training takes networks with one input; {network.name} has {len(network.inputs)}"
        )
    return network.inputs[0].sample_shape


def check_fit(
    network: Network,
    backend: str,
    hparams: Mapping[str, Any],
    sample_shape: tuple[int, ...],
    num_classes: int,
    limits: Limits | None = None,
) -> Network:
    """The network with its hyperparameters fixed, after checking the data can feed it and
    its output can express the dataset's classes. Raises DSLError / DatasetError."""
    resolved, report = prepare(network, backend, hparams, limits)
    empty = Arrays(np.zeros((0, *sample_shape), np.float32), np.zeros(0, np.int64), num_classes)
    datasets.fit_to_input(empty, input_shape(resolved), resolved.inputs[0].name)
    out = report.output_shape
    units = out[-1] if out else None
    if num_classes <= 0:  # not known yet (an uploaded dataset before it is loaded)
        return resolved
    if units is not None and units > 1 and units != num_classes:
        raise DatasetError(
            f"the network outputs {units} values per sample, but the dataset has "
            f"{num_classes} classes"
        )
    if units == 1 and num_classes > 2:
        raise DatasetError(
            f"the network has one output unit (binary), but the dataset has {num_classes} classes"
        )
    return resolved


class OverLimit(ValueError):
    """The request asks more of a worker than the service's limits allow."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def check_budget(
    resolved: Network, request: TrainingRequest, sample_shape: tuple[int, ...], limits: Limits
) -> None:
    """Refuse what would not fit a worker, before it is queued: generated data over
    `limits.max_dataset_values`, or a training whose memory estimate
    (`neural_dsl.limits.training_bytes`) is over `limits.max_training_bytes`."""
    if "synthetic" in request.dataset:
        values = request.dataset["synthetic"]["num_samples"] * math.prod(sample_shape)
        if values > limits.max_dataset_values:
            raise OverLimit(
                "dataset.synthetic.num_samples",
                f"the synthetic dataset would hold {values:,} values (samples x features), "
                f"over the limit of {limits.max_dataset_values:,} (NEURAL_MAX_DATASET_VALUES)",
            )
    report = propagate_shapes(resolved, limits)
    activations = sum(
        math.prod(8 if d is None else d for d in layer.output_shape) for layer in report.layers
    )
    batch = _batch_size(resolved, request)
    need = training_bytes(report.total_params or 0, activations, batch)
    if need > limits.max_training_bytes:
        raise OverLimit(
            "source",
            f"training {resolved.name} needs about {need / 2**30:.1f} GiB "
            f"({report.total_params or 0:,} parameters, batches of {batch}), over the "
            f"worker's budget of {limits.max_training_bytes / 2**30:.1f} GiB "
            "(NEURAL_TRAINING_MEMORY_BYTES)",
        )


def _batch_size(network: Network, request: TrainingRequest) -> int:
    """The batch size the training will use, as far as it is known before it starts."""
    declared = network.training.batch_size
    for value in (request.batch_size, declared):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if isinstance(declared, HPO):
        chosen = request.hparams.get(declared.name)
        if isinstance(chosen, int) and not isinstance(chosen, bool):
            return chosen
        # a search may pick any value of the space: budget for the largest
        space = declared.space
        values: tuple[Any, ...] = ()
        if isinstance(space, Choice):
            values = space.values
        elif isinstance(space, Range):
            values = (space.end,)
        sizes = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if sizes:
            return max(sizes)
    return DEFAULT_BATCH_SIZE


def synthetic_shape(network: Network) -> tuple[int, ...]:
    """A concrete sample shape for synthetic data: unknown dimensions get 8."""
    return tuple(8 if d is None else d for d in input_shape(network))


def load_data(request: TrainingRequest, network: Network, uploaded: Any = None) -> Arrays:
    """The request's dataset, shaped for the network's input. `uploaded` loads a dataset id."""
    d = request.dataset
    if "builtin" in d:
        data = datasets.builtin(d["builtin"])
    elif "synthetic" in d:
        s = d["synthetic"]
        data = datasets.synthetic(
            synthetic_shape(network), s["num_samples"], s["num_classes"], s["seed"]
        )
    else:
        data = uploaded(d["dataset_id"])
    return datasets.fit_to_input(data, input_shape(network), network.inputs[0].name)
