"""Where a model run happens: in a thread pool, off the event loop, or inline when runs are
short.

A thread hop (submit, wake the worker, wake the event loop back) costs tens of microseconds of
CPU and two context switches; a small model's run takes a few. So runs whose recent average
is under `inline_below` seconds run on the event loop itself, which they hold for less time
than the hop would cost; longer ones (or while the average is unknown) go to the pool, so
the loop keeps serving calls meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# (feeds, output names) -> the outputs, in order; blocking
RunFn = Callable[[dict[str, np.ndarray], list[str]], list[np.ndarray]]

INLINE_BELOW = 150e-6  # seconds
WEIGHT = 0.1  # of the newest run in the moving average


class Runner:
    def __init__(self, run: RunFn, workers: int, inline_below: float = INLINE_BELOW) -> None:
        self.run = run
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="model")
        self.inline_below = inline_below
        self.average: float | None = None  # seconds per run, recent runs weigh most

    def _timed(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        started = time.perf_counter()
        try:
            return self.run(feeds, outputs)
        finally:
            took = time.perf_counter() - started
            self.average = (
                took if self.average is None else (self.average + WEIGHT * (took - self.average))
            )

    async def __call__(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        if self.average is not None and self.average < self.inline_below:
            return self._timed(feeds, outputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._timed, feeds, outputs)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["INLINE_BELOW", "RunFn", "Runner"]
