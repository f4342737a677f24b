"""The PyTorch engine: one optimizer step on a batch of rows, validation, and the checkpoint of
model, optimizer and schedule state. PyTorch is imported when an engine is made, so importing
this module is cheap."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from neural_dsl.backends.common import settings
from neural_dsl.ir import Network
from neural_dsl.shapes import ShapeReport

from .checkpoints import usable
from .spec import TrainSpec
from .task import Task, epoch_seed

log = logging.getLogger(__name__)


class TorchEngine:
    checkpoint_name = "checkpoint.pt"
    weights_name = "model.pt"

    def __init__(
        self, network: Network, report: ShapeReport, task: Task, spec: TrainSpec, notes: list[str]
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
        self.torch.manual_seed(epoch_seed(self.spec.seed, epoch))  # dropout masks
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
            if not usable(meta, fingerprint, path):
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

    def export_onnx(self, path: Path) -> None:
        from neural_dsl.backends import lower_onnx
        from neural_dsl.backends.onnx_backend import torch_state_dict

        model = self.model if self.placed else self.model.to("cpu")
        try:
            lowered = lower_onnx(self.network, self.report, torch_state_dict(model))
            with open(path, "wb") as f:
                lowered.write(f)
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
