"""An event loop, and what an actor opens on it, kept per Dramatiq worker thread from one
message to the next.

An actor body that calls `asyncio.run` builds a new loop, database engine and connection and
Redis connection for every message: about 20 ms before a job can even be marked started.
`ThreadLoop.run` runs the actor's coroutine on its thread's own loop with resources opened
once (for the same settings), and keeps what `asyncio.run` promises a message: tasks the
coroutine left behind are cancelled when it returns. A message that raises (an
infrastructure failure Dramatiq retries, or its time limit's interrupt) closes both, so its
retry starts on fresh connections, as before. The worker closes them when its thread stops
(`CloseThreadLoops`, a middleware).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from dramatiq import Broker
from dramatiq.middleware import Middleware

from .settings import Settings

R = TypeVar("R")
T = TypeVar("T")

log = logging.getLogger(__name__)


class ThreadLoop(Generic[R]):
    """Per worker thread: one `asyncio.Runner` and one R, made by `opener(settings)` on the
    loop and closed with `closer(r)`; settings unlike the last ones open a new R."""

    def __init__(
        self, opener: Callable[[Settings], R], closer: Callable[[R], Awaitable[None]]
    ) -> None:
        self._opener = opener
        self._closer = closer
        self._local = threading.local()

    def run(self, settings: Settings, work: Callable[[R], Awaitable[T]]) -> T:
        state = self._local
        if getattr(state, "runner", None) is None or state.settings != settings:
            self.close()
            runner = asyncio.Runner()
            state.resources = runner.run(self._open(settings))
            state.runner, state.settings = runner, settings
        try:
            return state.runner.run(self._settled(work(state.resources)))
        except BaseException:
            self.close()
            raise

    async def _open(self, settings: Settings) -> R:
        return self._opener(settings)  # on the loop: what it opens belongs to this loop

    @staticmethod
    async def _settled(work: Awaitable[T]) -> T:
        try:
            return await work
        finally:
            await _cancel_the_others()  # as asyncio.run would: nothing outlives its message

    async def _closed(self, resources: R) -> None:
        await _cancel_the_others()  # a message stopped by an exception may have left some
        await self._closer(resources)

    def close(self) -> None:
        """Close this thread's resources and loop, if it has them."""
        state = self._local
        runner: asyncio.Runner | None = getattr(state, "runner", None)
        if runner is None:
            return
        state.runner = None
        try:
            runner.run(self._closed(state.resources))
        except Exception:
            log.warning("closing a worker thread's resources failed", exc_info=True)
        finally:
            state.resources = None
            with contextlib.suppress(Exception):
                runner.close()


async def _cancel_the_others() -> None:
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


class CloseThreadLoops(Middleware):
    """Closes the given loops' resources in each worker thread as it stops (the hook runs
    in that thread)."""

    def __init__(self, *loops: ThreadLoop[Any]) -> None:
        self.loops = loops

    def before_worker_thread_shutdown(self, broker: Broker, thread: Any) -> None:
        for loop in self.loops:
            loop.close()
