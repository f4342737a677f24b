"""A training worker gets ready before it takes its first job.

A fresh worker's first digits job spent about 9 s between "started" and its first epoch, none
of it training: importing PyTorch (2 s), torch._dynamo, which the first optimizer imports
(1.5 s), scikit-learn for the builtin datasets (1.2 s), and the first optimizer steps (1.5 s).
Later jobs in the same process took 0.2 s. `WarmUp` (a Dramatiq middleware) runs one epoch of
a small network on the digits through the same steps a job takes, PyTorch being the default
backend, before the worker's consumers start (`before_worker_boot`); TensorFlow and Keras are
imported after boot on a thread of their own, so they never hold up a PyTorch job. A failed
warm-up is logged and costs only speed: the first job then imports what it needs itself.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dramatiq import Broker
from dramatiq.middleware import Middleware
from neural_dsl import Limits

log = logging.getLogger(__name__)

PROGRAM = """
network WarmUp {
  input: (64,)
  layers:
    Dense(16, "relu")
    Dropout(0.1)
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
}
"""


class _Quiet:
    """Callbacks that let the warm-up epoch run to its end and report nowhere."""

    def should_stop(self) -> bool:
        return False

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        pass

    def on_epoch(self, result: Any) -> None:
        pass


def warm_pytorch(limits: Limits) -> float:
    """One epoch of PROGRAM on the digits, through the job's own steps (parse, dataset, fit
    check, spec, the training loop and its checkpoint), in a directory removed afterwards.
    Returns the seconds it took."""
    from . import plan, training
    from .plan import TrainingRequest

    t0 = time.perf_counter()
    req = TrainingRequest(
        source=PROGRAM, backend="pytorch", dataset={"builtin": "digits"}, network="", epochs=1
    )
    network = plan.network_of(req.source, req.network, limits)
    data = plan.load_data(req, network)
    plan.check_fit(network, req.backend, {}, data.x.shape[1:], data.num_classes, limits)
    spec = training.resolve_spec(network, req.backend, epochs=1, validation_split=0.2)
    with tempfile.TemporaryDirectory(prefix="neural-warmup-") as workdir:
        training.train(network, {}, data, spec, Path(workdir), _Quiet(), onnx=False)
    return time.perf_counter() - t0


def import_tensorflow() -> None:
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


class WarmUp(Middleware):
    """Warms the training path in each worker process before it consumes (see the module)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def before_worker_boot(self, broker: Broker, worker: Any) -> None:
        try:
            log.info("ready to train: PyTorch warmed in %.1f s", warm_pytorch(self.limits))
        except Exception:
            log.warning("the PyTorch warm-up failed; the first job will be slower", exc_info=True)

    def after_worker_boot(self, broker: Broker, worker: Any) -> None:
        threading.Thread(target=self._tensorflow, name="warm-tensorflow", daemon=True).start()

    @staticmethod
    def _tensorflow() -> None:
        t0 = time.perf_counter()
        try:
            import_tensorflow()
        except Exception:
            log.warning("importing TensorFlow failed; its first job will be slower", exc_info=True)
            return
        log.info("TensorFlow imported in %.1f s", time.perf_counter() - t0)
