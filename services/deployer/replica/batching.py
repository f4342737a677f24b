"""Adaptive batching: concurrent requests merged along axis 0, run once, split back.

A runner takes the oldest waiting request, then adds the waiting requests that can join it
(same requested outputs, same datatypes and same shapes past the first axis) until the batch
has `max_rows` rows (or the next that could join does not fit) or the oldest has waited
`max_delay` seconds, runs the batch (runner.py: in a thread, or inline when runs are short)
and hands each request its rows of every output. While a batch runs, requests queue up, so
under load batches fill without waiting.

The wait is adaptive: a batch waits for company only while there are signs of concurrent
callers (another batch is running, or the last batch formed held more than one request). A
lone caller, one request at a time, is never held `max_delay` for company that cannot come.
Requests that cannot merge (their inputs disagree on the first axis) run alone, at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

# (feeds, output names) -> the outputs, in order (a runner.Runner)
RunFn = Callable[[dict[str, np.ndarray], list[str]], Awaitable[list[np.ndarray]]]


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    key: tuple[object, ...]
    arrived: float
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


def merge_key(feeds: dict[str, np.ndarray], outputs: tuple[str, ...]) -> tuple[object, ...]:
    """Requests with equal keys can be merged into one batch."""
    return (
        outputs,
        tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(feeds.items())),
    )


def rows_of(feeds: dict[str, np.ndarray]) -> int | None:
    """The request's batch size: the first axis every input shares, or None (cannot merge)."""
    sizes = {a.shape[0] if a.ndim else None for a in feeds.values()}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size


def merge(feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(feeds) == 1:
        return feeds[0]
    return {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}


def split(outputs: list[np.ndarray], rows: list[int]) -> list[list[np.ndarray]] | None:
    """Each request's rows of every output; None when an output's first axis is not the
    batch's (a model that mixes rows, whose batch cannot be split)."""
    total = sum(rows)
    if any(o.ndim == 0 or o.shape[0] != total for o in outputs):
        return None
    parts = []
    start = 0
    for n in rows:
        parts.append([o[start : start + n] for o in outputs])
        start += n
    return parts


class Batcher:
    def __init__(
        self,
        run: RunFn,
        max_rows: int,
        max_delay: float,
        runners: int = 1,
    ) -> None:
        self.run = run
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.runners = runners
        self.queue: list[_Pending] = []
        # resolved by the next arrival: what collecting runners wait on (with a timer)
        self.waiters: list[asyncio.Future[None]] = []
        # One runner forms a batch at a time (the others run theirs): two forming at once
        # would split what one batch could hold.
        self.forming = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []
        self.batches = 0  # batches run (merged or alone): for tests and logs
        self.running = 0  # batches being run now
        self.had_company = False  # whether the last batch formed held more than one request

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        rows = rows_of(feeds)
        if rows is None or rows > self.max_rows:
            self.batches += 1
            return await self.run(feeds, outputs)
        if not self.tasks:
            self.tasks = [asyncio.create_task(self._runner()) for _ in range(self.runners)]
        names = tuple(outputs)
        item = _Pending(
            feeds, names, rows, merge_key(feeds, names), time.monotonic(), loop.create_future()
        )
        self.queue.append(item)
        for waiter in self.waiters:
            _wake(waiter)
        return await item.future

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        for item in self.queue:
            if not item.future.done():
                item.future.cancel()
        self.queue.clear()

    # ------------------------------------------------------------------ runner
    def _take(self, batch: list[_Pending], rows: int) -> tuple[int, bool]:
        """Move the waiting requests that fit into `batch`: the new row count, and whether
        one that could join did not fit (then waiting longer cannot grow the batch)."""
        key = batch[0].key
        kept = []
        full = False
        for item in self.queue:
            if item.future.done():  # the caller gave up (cancelled): drop it
                continue
            if item.key == key and rows + item.rows <= self.max_rows:
                batch.append(item)
                rows += item.rows
            else:
                full = full or item.key == key
                kept.append(item)
        self.queue = kept
        return rows, full

    async def _next_arrival(self, timeout: float | None) -> None:
        """Return on the next request's arrival, or after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiters.append(waiter)
        timer = None if timeout is None else loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            self.waiters.remove(waiter)
            if timer is not None:
                timer.cancel()

    async def _collect(self) -> list[_Pending]:
        while True:
            self.queue = [i for i in self.queue if not i.future.done()]
            if self.queue:
                break
            await self._next_arrival(None)
        first = self.queue.pop(0)
        batch = [first]
        rows, full = self._take(batch, first.rows)
        deadline = first.arrived + self.max_delay
        while rows < self.max_rows and not full and (self.running or self.had_company):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._next_arrival(left)
            rows, full = self._take(batch, rows)
        self.had_company = len(batch) > 1
        return batch

    async def _runner(self) -> None:
        while True:
            async with self.forming:
                batch = await self._collect()
            self.running += 1
            try:
                await self._run(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.cancel()
                raise
            finally:
                self.running -= 1

    async def _run(self, batch: list[_Pending]) -> None:
        names = list(batch[0].outputs)
        self.batches += 1
        try:
            merged = merge([item.feeds for item in batch])
            outputs = await self.run(merged, names)
            parts = split(outputs, [item.rows for item in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exception=exc)
                return
            parts = None  # run each alone, so that a failure lands on its own request only
        if parts is None:
            await asyncio.gather(*(self._alone(item, names) for item in batch))
            return
        for item, part in zip(batch, parts, strict=True):
            _settle(item, result=part)

    async def _alone(self, item: _Pending, names: list[str]) -> None:
        self.batches += 1
        try:
            _settle(item, result=await self.run(item.feeds, names))
        except Exception as exc:
            _settle(item, exception=exc)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _settle(
    item: _Pending,
    result: list[np.ndarray] | None = None,
    exception: BaseException | None = None,
) -> None:
    if item.future.done():
        return
    if exception is not None:
        item.future.set_exception(exception)
    else:
        item.future.set_result(result or [])


__all__ = ["Batcher", "merge", "merge_key", "rows_of", "split"]
