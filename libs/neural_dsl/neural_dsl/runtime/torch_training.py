"""Loss, optimizer and learning-rate schedule for a DSL network, in PyTorch, with Keras' meaning.

The DSL's losses take the model's outputs as Keras does (probabilities after a softmax,
not logits); its optimizers use Keras' defaults; its schedules step once per batch.
Self-contained (torch and the standard library only): the PyTorch code generator copies
this file into generated modules.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

_EPS = 1e-7


def _probs(p: torch.Tensor) -> torch.Tensor:
    p = p / p.sum(dim=-1, keepdim=True)
    return p.clamp(_EPS, 1 - _EPS)


def keras_loss(name: str) -> Any:
    """loss(y_pred, y_true) -> scalar, averaged over the batch like Keras."""

    def categorical(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -(y * torch.log(_probs(p))).sum(-1).mean()

    def sparse(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        picked = _probs(p).gather(-1, y.long().reshape(-1, 1)).squeeze(-1)
        return -torch.log(picked).mean()

    def binary(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = p.clamp(_EPS, 1 - _EPS)
        y = y.reshape(p.shape).to(p.dtype)
        return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()

    def hinge(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.reshape(p.shape).to(p.dtype)
        y = torch.where(y == 0, -torch.ones_like(y), y)  # 0/1 labels become -1/1, as Keras does
        return torch.clamp(1 - y * p, min=0).mean()

    def kld(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y, p = y.clamp(_EPS, 1), p.clamp(_EPS, 1)
        return (y * torch.log(y / p)).sum(-1).mean()

    def cosine(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(p, y.to(p.dtype), dim=-1).mean()

    def as_pred(fn: Any) -> Any:
        return lambda p, y: fn(p, y.reshape(p.shape).to(p.dtype))

    table = {
        "categorical_crossentropy": categorical,
        "sparse_categorical_crossentropy": sparse,
        "nll": sparse,
        "binary_crossentropy": binary,
        "mse": as_pred(F.mse_loss),
        "mean_squared_error": as_pred(F.mse_loss),
        "mae": as_pred(F.l1_loss),
        "mean_absolute_error": as_pred(F.l1_loss),
        "huber": as_pred(lambda p, y: F.huber_loss(p, y, delta=1.0)),
        "hinge": hinge,
        "kl_divergence": kld,
        "kld": kld,
        "cosine_similarity": cosine,
        "poisson": as_pred(lambda p, y: (p - y * torch.log(p + _EPS)).mean()),
        "log_cosh": as_pred(
            lambda p, y: ((p - y) + F.softplus(-2 * (p - y)) - math.log(2.0)).mean()
        ),
    }
    return table[name]


# Keras' default learning rates and epsilons, so an unparameterised `Adam` means the same.
_DEFAULT_LR = {"SGD": 0.01}


def make_optimizer(params: Any, spec: dict[str, Any]) -> torch.optim.Optimizer:
    kind, p = spec["type"], dict(spec.get("params", {}))
    lr = p.get("learning_rate", _DEFAULT_LR.get(kind, 0.001))
    if isinstance(lr, dict):  # a schedule: the optimizer starts at its initial rate
        lr = lr["params"]["initial_learning_rate"]
    wd = p.get("weight_decay", 0.0)
    eps = p.get("epsilon", 1e-7)
    betas = (p.get("beta_1", 0.9), p.get("beta_2", 0.999))
    if kind == "SGD":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=p.get("momentum", 0.0),
            nesterov=p.get("nesterov", False),
            weight_decay=wd,
        )
    if kind == "Adam":
        return torch.optim.Adam(
            params, lr=lr, betas=betas, eps=eps, weight_decay=wd, amsgrad=p.get("amsgrad", False)
        )
    if kind == "AdamW":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd or 0.004)
    if kind == "RMSprop":
        return torch.optim.RMSprop(
            params,
            lr=lr,
            alpha=p.get("rho", 0.9),
            eps=eps,
            momentum=p.get("momentum", 0.0),
            weight_decay=wd,
        )
    if kind == "Adagrad":
        return torch.optim.Adagrad(params, lr=lr, eps=eps, weight_decay=wd)
    if kind == "Adadelta":
        return torch.optim.Adadelta(params, lr=lr, rho=p.get("rho", 0.95), eps=eps, weight_decay=wd)
    if kind == "Adamax":
        return torch.optim.Adamax(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    return torch.optim.NAdam(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)


def schedule_factor(spec: dict[str, Any] | None) -> Any:
    """step -> multiplier of the initial learning rate, as Keras' schedule of that name."""
    if not spec:
        return None
    kind, p = spec["type"], spec["params"]
    lr0 = p["initial_learning_rate"]

    def exponential(step: int) -> float:
        t = step / p["decay_steps"]
        return p["decay_rate"] ** (math.floor(t) if p.get("staircase") else t)

    def inverse_time(step: int) -> float:
        t = step / p["decay_steps"]
        return 1.0 / (1.0 + p["decay_rate"] * (math.floor(t) if p.get("staircase") else t))

    def polynomial(step: int) -> float:
        end, power = p.get("end_learning_rate", 0.0001), p.get("power", 1.0)
        frac = 1 - min(step, p["decay_steps"]) / p["decay_steps"]
        return ((lr0 - end) * frac**power + end) / lr0

    def cosine(step: int) -> float:
        alpha = p.get("alpha", 0.0)
        frac = min(step, p["decay_steps"]) / p["decay_steps"]
        return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * frac)) + alpha

    def step_decay(step: int) -> float:
        return p.get("gamma", 0.1) ** (step // p["step_size"])

    return {
        "ExponentialDecay": exponential,
        "InverseTimeDecay": inverse_time,
        "PolynomialDecay": polynomial,
        "CosineDecay": cosine,
        "StepDecay": step_decay,
    }[kind]


def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-batch scheduler for the optimizer's learning-rate schedule, if it has one."""
    lr = spec.get("params", {}).get("learning_rate")
    factor = schedule_factor(lr if isinstance(lr, dict) else None)
    return None if factor is None else torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    x: Any,
    y: torch.Tensor,
    scheduler: Any = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
) -> float:
    """One optimizer step on one batch; returns the batch loss before the step."""
    model.train()
    optimizer.zero_grad()
    inputs = x if isinstance(x, list | tuple) else (x,)
    loss = loss_fn(model(*inputs), y)
    loss.backward()
    if clipvalue is not None:
        torch.nn.utils.clip_grad_value_(model.parameters(), clipvalue)
    if clipnorm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clipnorm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return float(loss.detach())
