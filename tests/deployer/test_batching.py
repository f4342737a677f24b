"""The replica's adaptive batching, in process: merge and split, the maximum batch size, the
maximum wait, concurrent callers, and failures landing on their own request only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from services.deployer.replica.batching import Batcher, merge, merge_key, rows_of, split
from services.deployer.replica.runner import Runner
from tests.waiting import until_async


class Model:
    """A stand-in model: y = 2x + 1, recording the batch sizes it ran; `gate` holds a run
    until the test opens it, so that requests pile up meanwhile."""

    def __init__(self, fail: Callable[[np.ndarray], bool] = lambda x: False) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        self.running.set()
        self.gate.wait(30)
        x = feeds["x"]
        self.batches.append(x.shape[0])
        if self.fail(x):
            raise ValueError("the model refuses a NaN")
        return [x * 2 + 1 for _ in outputs]


def threaded(run: Callable[..., list[np.ndarray]]) -> Runner:
    """Runs in a thread always (never inline), as a slow model's would: a test can hold them."""
    return Runner(run, workers=4, inline_below=0)


def rows(n: int, start: float = 0) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + n * 3, dtype=np.float32).reshape(n, 3)}


def test_merge_and_split_are_inverse() -> None:
    parts = [rows(1), rows(3, 100), rows(2, 200)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 3)
    back = split([merged["x"]], [1, 3, 2])
    assert back is not None
    for part, (got,) in zip(parts, back, strict=True):
        assert np.array_equal(got, part["x"])


def test_split_refuses_outputs_that_are_not_per_row() -> None:
    assert split([np.zeros((5, 2))], [2, 2]) is None
    assert split([np.float32(1)], [1]) is None


def test_rows_and_keys() -> None:
    assert rows_of(rows(4)) == 4
    assert rows_of({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}) is None
    assert merge_key(rows(1), ("y",)) == merge_key(rows(5), ("y",))
    assert merge_key(rows(1), ("y",)) != merge_key(rows(1), ("z",))
    assert merge_key(rows(1), ("y",)) != merge_key({"x": np.zeros((1, 4), np.float32)}, ("y",))
    assert merge_key(rows(1), ("y",)) != merge_key({"x": np.zeros((1, 3), np.float64)}, ("y",))


async def test_concurrent_requests_merge_and_each_gets_its_own_rows() -> None:
    model = Model()
    batcher = Batcher(threaded(model.run), max_rows=64, max_delay=30)
    requests = [rows(1 + 2 * (i % 2), 1000 * i) for i in range(32)]  # 64 rows in all
    try:
        results = await asyncio.gather(*(batcher.infer(r, ["y"]) for r in requests))
    finally:
        await batcher.close()
    for request, (y,) in zip(requests, results, strict=True):
        assert np.array_equal(y, request["x"] * 2 + 1)
    # 64 rows fill the batch: one run, without waiting out the 30 s delay
    assert model.batches == [64]


async def test_a_batch_never_exceeds_the_maximum() -> None:
    model = Model()
    batcher = Batcher(threaded(model.run), max_rows=8, max_delay=0.05)
    requests = [rows(3, 100 * i) for i in range(8)]  # 24 rows: at most two requests fit in 8
    try:
        results = await asyncio.gather(*(batcher.infer(r, ["y"]) for r in requests))
    finally:
        await batcher.close()
    # a third request does not fit, so each pair runs without waiting for more
    assert model.batches == [6, 6, 6, 6]
    for request, (y,) in zip(requests, results, strict=True):
        assert np.array_equal(y, request["x"] * 2 + 1)


async def test_a_lone_caller_is_not_held_and_concurrent_ones_wait_for_company() -> None:
    model = Model()
    batcher = Batcher(threaded(model.run), max_rows=5, max_delay=30)
    try:
        # one request, nothing else in flight and no sign of concurrency: run at once, not
        # after the 30 s delay
        (y,) = await batcher.infer(rows(2), ["y"])
        assert np.array_equal(y, rows(2)["x"] * 2 + 1)
        # three at once: merged, and now the batcher has seen concurrent callers ...
        await asyncio.gather(*(batcher.infer(rows(1, i), ["y"]) for i in range(3)))
        # ... so the next request waits (up to the delay) for company; one joins it and fills
        # the batch, which then runs without waiting out the 30 s
        waiting = asyncio.ensure_future(batcher.infer(rows(1), ["y"]))
        await until_async(lambda: not batcher.queue and batcher.forming.locked(), what="forming")
        joining = asyncio.ensure_future(batcher.infer(rows(4, 10), ["y"]))
        (a,), (b,) = await asyncio.gather(waiting, joining)
    finally:
        await batcher.close()
    assert model.batches == [2, 3, 5]
    assert np.array_equal(a, rows(1)["x"] * 2 + 1)
    assert np.array_equal(b, rows(4, 10)["x"] * 2 + 1)


async def test_the_delay_ends_the_wait() -> None:
    model = Model()
    batcher = Batcher(threaded(model.run), max_rows=100, max_delay=0.005)
    try:
        await asyncio.gather(*(batcher.infer(rows(1, i), ["y"]) for i in range(3)))
        # concurrency seen: a lone request waits for company, and the delay ends the wait
        (y,) = await batcher.infer(rows(2), ["y"])
        assert np.array_equal(y, rows(2)["x"] * 2 + 1)
    finally:
        await batcher.close()
    assert model.batches == [3, 2]


async def test_requests_queued_while_a_batch_runs_form_the_next_batch() -> None:
    model = Model()
    model.gate.clear()
    batcher = Batcher(threaded(model.run), max_rows=16, max_delay=0)
    try:
        first = asyncio.ensure_future(batcher.infer(rows(1), ["y"]))
        await until_async(model.running.is_set, what="the first batch runs")
        later = [asyncio.ensure_future(batcher.infer(rows(1, i), ["y"])) for i in range(10)]
        await until_async(lambda: len(batcher.queue) == 10, what="ten requests queued")
        model.gate.set()
        await asyncio.gather(first, *later)
    finally:
        await batcher.close()
    assert model.batches == [1, 10]


async def test_different_requested_outputs_or_shapes_are_not_merged() -> None:
    model = Model()
    batcher = Batcher(threaded(model.run), max_rows=64, max_delay=0.01)
    wide = {"x": np.ones((1, 5), np.float32)}
    try:
        (a,), (b1, b2), (c,) = await asyncio.gather(
            batcher.infer(rows(2), ["y"]),
            batcher.infer(rows(2, 50), ["y", "z"]),
            batcher.infer(wide, ["y"]),
        )
    finally:
        await batcher.close()
    assert sorted(model.batches) == [1, 2, 2]
    assert np.array_equal(a, rows(2)["x"] * 2 + 1)
    assert np.array_equal(b1, rows(2, 50)["x"] * 2 + 1) and np.array_equal(b1, b2)
    assert np.array_equal(c, wide["x"] * 2 + 1)


async def test_inputs_disagreeing_on_the_batch_run_alone() -> None:
    seen = []

    def run(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        seen.append({k: v.shape for k, v in feeds.items()})
        return [feeds["a"]]

    batcher = Batcher(threaded(run), max_rows=64, max_delay=30)
    feeds = {"a": np.zeros((2, 1)), "b": np.zeros((3, 1))}
    try:
        (out,) = await asyncio.wait_for(batcher.infer(feeds, ["y"]), 30)
    finally:
        await batcher.close()
    assert out.shape == (2, 1) and seen == [{"a": (2, 1), "b": (3, 1)}]


async def test_a_failing_request_does_not_fail_the_others_of_its_batch() -> None:
    model = Model(fail=lambda x: bool(np.isnan(x).any()))
    batcher = Batcher(threaded(model.run), max_rows=4, max_delay=30)
    bad = {"x": np.full((1, 3), np.nan, np.float32)}
    try:
        results = await asyncio.gather(
            batcher.infer(rows(1), ["y"]),
            batcher.infer(bad, ["y"]),
            batcher.infer(rows(2, 10), ["y"]),
            return_exceptions=True,
        )
    finally:
        await batcher.close()
    assert isinstance(results[1], ValueError)
    assert np.array_equal(results[0][0], rows(1)["x"] * 2 + 1)
    assert np.array_equal(results[2][0], rows(2, 10)["x"] * 2 + 1)
    assert model.batches[0] == 4  # merged first, then each alone
    assert sorted(model.batches[1:]) == [1, 1, 2]


async def test_a_model_that_mixes_rows_is_run_per_request() -> None:
    def run(feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return [feeds["x"].sum(axis=0, keepdims=True)]  # one row whatever the batch

    batcher = Batcher(threaded(run), max_rows=4, max_delay=30)
    requests = [rows(2), rows(2, 10)]
    try:
        results = await asyncio.gather(*(batcher.infer(r, ["y"]) for r in requests))
    finally:
        await batcher.close()
    for request, (y,) in zip(requests, results, strict=True):
        assert np.array_equal(y, request["x"].sum(axis=0, keepdims=True))


async def test_a_cancelled_caller_is_dropped_and_the_rest_are_answered() -> None:
    model = Model()
    model.gate.clear()
    batcher = Batcher(threaded(model.run), max_rows=16, max_delay=0)
    try:
        first = asyncio.ensure_future(batcher.infer(rows(1), ["y"]))
        await until_async(model.running.is_set, what="the first batch runs")
        gone = asyncio.ensure_future(batcher.infer(rows(5), ["y"]))
        kept = asyncio.ensure_future(batcher.infer(rows(2), ["y"]))
        await until_async(lambda: len(batcher.queue) == 2, what="two requests queued")
        gone.cancel()
        model.gate.set()
        await first
        (y,) = await kept
        assert np.array_equal(y, rows(2)["x"] * 2 + 1)
        with pytest.raises(asyncio.CancelledError):
            await gone
    finally:
        await batcher.close()
    assert model.batches == [1, 2]


async def test_a_second_runner_forms_the_next_batch_while_the_first_runs() -> None:
    model = Model()
    model.gate.clear()
    batcher = Batcher(threaded(model.run), max_rows=10, max_delay=30, runners=2)
    try:
        first = [asyncio.ensure_future(batcher.infer(rows(10), ["y"]))]
        await until_async(model.running.is_set, what="the first batch runs")
        later = [asyncio.ensure_future(batcher.infer(rows(1, i), ["y"])) for i in range(10)]
        # ten rows fill the second batch, formed and sent to the model while the first is held
        await until_async(lambda: not batcher.queue and not batcher.forming.locked(), what="sent")
        model.gate.set()
        await asyncio.gather(*first, *later)
    finally:
        await batcher.close()
    assert model.batches == [10, 10]
