"""The trainer's training loop against a hand-written PyTorch loop, in one run.

Both train the same model (built by neural_dsl.backends.build_torch from one DSL program,
same seed) on the same data (scikit-learn's digits, or synthetic data of any size), with
the same batch size, epochs, loss and optimizer (neural_dsl.runtime.torch_training) and
`torch.set_num_threads`, on the same device. The baseline is the loop one writes by hand:
shuffle, forward, loss, backward, step, `loss.item()` per batch. `training.train` adds what
a job needs: accuracy, `should_stop` / `on_batch` per batch, a durable checkpoint after every
epoch. Rounds alternate the two; prints the median samples per second of each and the ratio
ours / baseline (1.0 = no overhead). `--onnx` also times a run that ends in the ONNX export.

    .venv/bin/python bench/training_overhead.py [--epochs N] [--batch-size B] [--rounds R]
        [--threads T] [--dataset digits|synthetic] [--samples N] [--onnx] [--jobs N]

Then, with --jobs N (200 by default), bench/job_latency.py: submit-to-started latency of N
trivial jobs through a real trainer server and worker, against a bare Dramatiq round trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the services package lives at the repository root

PROGRAM = """
network Bench {
  input: (64)
  layers:
    Dense(256, "relu")
    Dense(128, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.001)
}
"""


class Quiet:
    """Callbacks as a worker's: a cheap flag check and a cheap progress hook."""

    def __init__(self) -> None:
        self.stop = False
        self.last = 0.0

    def should_stop(self) -> bool:
        return self.stop

    def on_batch(self, epoch: int, step: int, loss: float) -> None:
        self.last = loss

    def on_epoch(self, result: object) -> None:
        pass


def baseline(network: Any, data: Any, epochs: int, batch_size: int, seed: int) -> float:
    """A hand-written loop; returns its wall time (model build included, as in ours)."""
    import torch
    from neural_dsl.backends import build_torch
    from neural_dsl.backends.common import settings
    from neural_dsl.runtime.torch_training import keras_loss, make_optimizer

    started = time.perf_counter()
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = build_torch(network).to(device)
    optimizer = make_optimizer(model.parameters(), settings(network)["optimizer"])
    loss_fn = keras_loss(network.loss)
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        running = 0.0
        for at in range(0, len(x), batch_size):
            idx = order[at : at + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            running += loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def ours(network: Any, data: Any, spec: Any, onnx: bool) -> tuple[float, str]:
    from services.trainer import training

    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        out = training.train(network, {}, data, spec, Path(workdir), Quiet(), onnx=onnx)
        return time.perf_counter() - started, out.device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--dataset", choices=("digits", "synthetic"), default="digits")
    ap.add_argument("--samples", type=int, default=20_000, help="synthetic data size")
    ap.add_argument("--onnx", action="store_true", help="also time a run with the ONNX export")
    ap.add_argument(
        "--jobs", type=int, default=200, help="submit-to-started latency over N jobs (0: skip)"
    )
    args = ap.parse_args()

    import torch
    from neural_dsl import parse

    from services.trainer import datasets, training

    torch.set_num_threads(args.threads)
    network = parse(PROGRAM).network
    if args.dataset == "digits":
        data = datasets.builtin("digits")
    else:
        data = datasets.synthetic((64,), args.samples, 10, seed=0)
    spec = training.resolve_spec(
        network,
        "pytorch",
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_split=0.0,
        threads=args.threads,
    )
    work = len(data.x) * args.epochs

    # warm-up: first-call costs (allocator, kernels, imports) hit neither side's numbers
    warm = dataclasses.replace(spec, epochs=1)
    baseline(network, data, 1, args.batch_size, 0)
    _, device = ours(network, data, warm, onnx=False)

    base_rate, our_rate = [], []
    for r in range(args.rounds):
        pair = [
            lambda: base_rate.append(
                work / baseline(network, data, args.epochs, args.batch_size, 0)
            ),
            lambda: our_rate.append(work / ours(network, data, spec, onnx=False)[0]),
        ]
        for run in pair if r % 2 == 0 else reversed(pair):
            run()

    b, o = statistics.median(base_rate), statistics.median(our_rate)
    print(
        f"{args.dataset}: {len(data.x)} samples x {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.threads} threads, device {device}, median of {args.rounds} rounds"
    )
    print(f"hand-written loop  {b:12,.0f} samples/s")
    print(f"training.train     {o:12,.0f} samples/s   (checkpoint every epoch, no ONNX)")
    print(f"ratio ours/baseline {o / b:.3f}  (throughput; 1.0 = no overhead)")
    if args.onnx:
        with_export = work / ours(network, data, spec, onnx=True)[0]
        print(
            f"with ONNX export   {with_export:12,.0f} samples/s   ratio ours/baseline "
            f"{with_export / b:.3f} (one run)"
        )
    if args.jobs:
        from bench import job_latency

        job_latency.run(args.jobs)


if __name__ == "__main__":
    sys.exit(main())
