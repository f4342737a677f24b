"""What a training run records in the tracker: everything needed to reproduce it and to use
the trained model (the network, optimizer, loss, schedule of training, the data and how it was
prepared, the split's seed). Values are deterministic, so a redelivered job logs the same
write-once params again."""

from __future__ import annotations

from typing import Any

from neural_dsl.backends import prepare
from neural_dsl.ir import Network, Schedule

from .datasets import PREPROCESSING
from .plan import TrainingRequest
from .training import TrainSpec, with_learning_rate

MAX_VALUE_CHARS = 500
# The rate an optimizer without one starts at: Keras' defaults, which both runtimes follow.
_DEFAULT_LEARNING_RATE = {"SGD": 0.01}


def _text(value: Any) -> str:
    if isinstance(value, Schedule):
        args = ", ".join(f"{p.name}={_text(p.value)}" for p in value.params)
        return f"{value.type}({args})"
    return repr(value) if isinstance(value, float) else str(value)


def preprocessing(req: TrainingRequest) -> str:
    d = req.dataset
    if "builtin" in d:
        return PREPROCESSING.get(str(d["builtin"]), "none")
    if "synthetic" in d:
        return "none (generated: class prototypes plus unit Gaussian noise)"
    return "none (features as uploaded)"


def run_params(
    req: TrainingRequest,
    network: Network,
    spec: TrainSpec,
    job_id: str,
    hparams: dict[str, Any],
) -> dict[str, str]:
    """The tracker params of one training run of `network` (its HPO values in `hparams`)."""
    resolved, _ = prepare(network, spec.backend, hparams)
    resolved = with_learning_rate(resolved, spec.learning_rate)
    opt = resolved.optimizer
    opt_type = opt.type if opt else "Adam"
    rate = opt.get("learning_rate") if opt else None
    if rate is None:
        rate = _DEFAULT_LEARNING_RATE.get(opt_type, 0.001)
    params = {
        "network": resolved.name,
        "backend": req.backend,
        "loss": resolved.loss or "",
        "optimizer": opt_type,
        "learning_rate": _text(rate),
        "epochs": str(spec.epochs),
        "batch_size": str(spec.batch_size),
        "validation_split": str(spec.validation_split),
        # rows are shuffled with this seed (stratified by class) before the validation split
        "seed": str(spec.seed),
        "split": "stratified shuffle" if spec.validation_split else "none",
        "dataset": req.dataset_label(),
        "dataset.preprocessing": preprocessing(req),
        "job_id": job_id,
    }
    if opt:
        params.update(
            {f"optimizer.{p.name}": _text(p.value) for p in opt.params if p.name != "learning_rate"}
        )
    if req.model_id:
        params["model_id"] = req.model_id
    params.update({f"hparams.{k}": _text(v) for k, v in hparams.items()})
    return {k: v[:MAX_VALUE_CHARS] for k, v in params.items() if v != ""}
