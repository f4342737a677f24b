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

Frameworks are imported on the path that needs them (inside the engines), so importing this
package is cheap.

Modules: `spec` (the run's settings), `task` (the data as the network takes it, the batch
order), `loop` (`train` and its public types), `checkpoints` (atomic files, fingerprints),
`torch_engine` and `keras_engine` (one per framework).
"""

from .loop import Callbacks, Cancelled, EpochResult, TrainOutcome, train
from .spec import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_THREADS,
    TRAIN_BACKENDS,
    TrainSpec,
    resolve_spec,
    with_learning_rate,
)
from .task import SPARSE_LOSSES, train_rows

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EPOCHS",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_THREADS",
    "SPARSE_LOSSES",
    "TRAIN_BACKENDS",
    "Callbacks",
    "Cancelled",
    "EpochResult",
    "TrainOutcome",
    "TrainSpec",
    "resolve_spec",
    "train",
    "train_rows",
    "with_learning_rate",
]
