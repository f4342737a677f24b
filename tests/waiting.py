"""Waiting for a condition with a deadline: what tests do instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(
    condition: Callable[[], T], timeout: float = 30, what: str = "", every: float = 0.02
) -> T:
    """Return what `condition()` gave as soon as it is true; fail the test after `timeout`
    seconds. `every`: the pause between tries (longer for a condition that calls a server
    through the rate-limited gateway)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(every)
    return value


async def until_async(condition: Callable[[], object], timeout: float = 30, what: str = "") -> None:
    """`until` for a test running on an event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        await asyncio.sleep(0.01)
