"""One short training run per trainable backend reduces the loss on a fixed synthetic batch,
using only what the generated module provides (its loss, optimizer and schedule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from neural_dsl import check
from neural_dsl.backends import compile_network

from tests.codegen.helpers import load

PROGRAM = """
network Small {
  input: (8, 8, 1)
  layers:
    Conv2D(4, (3,3), "relu")
    Flatten()
    Dense(16, "relu")
    Output(5, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=ExponentialDecay(0.01, 100, 0.9))
  train { epochs: 1 batch_size: 16 }
}
"""


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 8, 8, 1)).astype("float32"), rng.integers(0, 5, 16)


def test_pytorch_generated_module_trains(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "small_torch.py"
    path.write_text(compile_network(check(PROGRAM).program.network, "pytorch").source or "")
    module = load(path, "small_torch")
    torch.manual_seed(0)
    model = module.build_model()
    optimizer = module.build_optimizer(model)
    scheduler = module.build_scheduler(optimizer)
    assert isinstance(optimizer, torch.optim.Adam)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    x, y = (torch.from_numpy(a) for a in batch())
    losses = [
        module.train_step(model, optimizer, module.loss_fn, x, y, scheduler) for _ in range(10)
    ]
    assert losses[-1] < losses[0]
    # the schedule moved the learning rate as ExponentialDecay(0.01, 100, 0.9) would
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.9 ** (10 / 100))


def test_tensorflow_generated_module_trains(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    path = tmp_path / "small_keras.py"
    path.write_text(compile_network(check(PROGRAM).program.network, "tensorflow").source or "")
    module = load(path, "small_keras")
    keras.utils.set_random_seed(0)
    model = module.build_model()
    schedule = model.optimizer.learning_rate
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert type(model.optimizer._learning_rate).__name__ == "ExponentialDecay", schedule
    x, y = batch()
    losses = [float(model.train_on_batch(x, y)) for _ in range(10)]
    assert losses[-1] < losses[0]
    assert module.TRAINING == {"epochs": 1, "batch_size": 16}
