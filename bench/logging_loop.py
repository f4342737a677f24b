"""The training loop both sides of tracker_ingest.py's logging comparison run, imported by our
client's side (.venv) and by MLflow's (.venv-bench), so the two time the same code.

`log(key, value, step)` queues a point, `flush()` waits until every queued point is stored."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

BATCH, FEATURES, HIDDEN, CLASSES = 32, 64, 32, 10  # the digits example's network and batch


class TinyMLP:
    """One SGD step of a 64-32-10 MLP on a batch of 32, forward and backward in numpy: about
    the smallest training step there is, so the one where logging weighs the most."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((BATCH, FEATURES))
        self.y = rng.integers(0, CLASSES, BATCH)
        self.w1 = rng.standard_normal((FEATURES, HIDDEN)) * 0.1
        self.w2 = rng.standard_normal((HIDDEN, CLASSES)) * 0.1
        self.rows = np.arange(BATCH)

    def step(self) -> float:
        h = np.maximum(self.x @ self.w1, 0.0)
        z = h @ self.w2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        loss = -np.log(p[self.rows, self.y]).mean()
        p[self.rows, self.y] -= 1.0
        p /= BATCH
        grad_h = (p @ self.w2.T) * (h > 0)
        self.w2 -= 0.01 * (h.T @ p)
        self.w1 -= 0.01 * (self.x.T @ grad_h)
        return float(loss)


class TorchMLP:
    """The same network and batch as a PyTorch training step (Adam, one thread), as the
    platform's trainer runs it: a typical small step. Only in .venv (MLflow's has no torch)."""

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)
        self.torch = torch
        self.model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), 0.01)
        self.loss = torch.nn.CrossEntropyLoss()
        self.x = torch.randn(BATCH, FEATURES)
        self.y = torch.randint(0, CLASSES, (BATCH,))

    def step(self) -> float:
        self.optimizer.zero_grad()
        loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return float(loss.item())


def throughput(
    log: Callable[[str, float, int], object], flush: Callable[[], object], points: int
) -> dict[str, float]:
    """`loop_per_s`: log calls per second of a loop that only logs; `delivered_per_s`: the
    same points counted up to the end of the flush that stores the last of them;
    `cpu_us_per_point`: this process's CPU time (all its threads) per point over the same
    stretch, what logging a point costs a training process, whatever its step."""
    log("warm", 0.0, 0)  # starts the client's thread and connection
    flush()
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(points):
        log("loss", 0.5, i)
    loop = time.perf_counter() - t0
    flush()
    return {
        "loop_per_s": points / loop,
        "delivered_per_s": points / (time.perf_counter() - t0),
        "cpu_us_per_point": (time.process_time() - c0) / points * 1e6,
    }


def overhead(
    log: Callable[[str, float, int], object],
    flush: Callable[[], object],
    model: TinyMLP | TorchMLP,
    steps: int = 5000,
    repeats: int = 7,
) -> dict[str, float]:
    """`overhead`: how much longer a training loop that logs its loss every step takes than
    the same loop without logging, its final flush included; `cpu_overhead`: the same in this
    process's CPU time (every thread's, so the client's sender too, but not the server's:
    other processes on a busy machine hardly move it); `step_us`: one step without logging.
    Each is the median over `repeats` pairs of loops, run back to back so that drift hits
    both alike."""
    wall: list[float] = []
    cpu: list[float] = []
    steps_us: list[float] = []
    for r in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            model.step()
        c1, t1 = time.process_time(), time.perf_counter()
        for i in range(steps):
            log("train/loss", model.step(), r * steps + i)
        flush()
        c2, t2 = time.process_time(), time.perf_counter()
        wall.append((t2 - t1) / (t1 - t0))
        cpu.append((c2 - c1) / (c1 - c0))
        steps_us.append((t1 - t0) / steps * 1e6)
    return {
        "step_us": statistics.median(steps_us),
        "overhead": statistics.median(wall) - 1,
        "cpu_overhead": statistics.median(cpu) - 1,
    }
