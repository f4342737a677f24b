"""ONNX compiles of the compiler server: one at a time, in a child process, behind a bounded
queue.

An ONNX export runs torch's exporter for seconds and holds the network's weights in memory;
torch's exporter is not thread-safe either. So the server never exports in its own process:
one spawned child (a `ProcessPoolExecutor` with one worker) takes the exports in turn, and a
child that dies (killed for memory) is replaced for the next request. At most `capacity`
ONNX compiles are held at once, the running one included; one more is RESOURCE_EXHAUSTED
at once, and a compile still waiting when the caller's deadline comes is DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import grpc
from neural_dsl import Limits
from service_kit.errors import ResourceExhausted, ServiceError, Unavailable

from .compile_step import Artifact, CompileInput, compile_outcome


class ExportQueue:
    def __init__(self, limits: Limits, capacity: int) -> None:
        self.limits = limits
        self.capacity = capacity
        self._held = 0  # compiles waiting or running
        self._turn = asyncio.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def held(self) -> int:
        """ONNX compiles admitted and not yet answered (waiting or exporting)."""
        return self._held

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a threaded gRPC server may inherit held locks
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=context)
        return self._pool

    async def compile(self, req: CompileInput, timeout: float | None) -> Artifact:
        """The artifact of `req`, compiled in the export process. `timeout`: seconds left
        of the caller's deadline (None: no deadline)."""
        if self._held >= self.capacity:
            raise ResourceExhausted(
                f"{self._held} ONNX compiles are already queued on this server, the limit "
                "(NEURAL_ONNX_EXPORT_QUEUE): retry later, or use SubmitCompile"
            )
        self._held += 1
        try:
            return await self._compile(req, None if timeout is None else time.monotonic() + timeout)
        finally:
            self._held -= 1

    async def _compile(self, req: CompileInput, deadline: float | None) -> Artifact:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self._turn.acquire(), _left(deadline))
        except TimeoutError:
            raise _deadline("waiting for the export process") from None
        future: Future | None = None
        try:
            if deadline is not None and deadline <= time.monotonic():
                raise _deadline("waiting for the export process")
            future = self._executor().submit(compile_outcome, req, self.limits)
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), _left(deadline))
        except TimeoutError:
            raise _deadline("exporting") from None
        except BrokenProcessPool:
            self._pool = None  # the child died (out of memory?): a new one for the next
            raise Unavailable("the export process died during the export: retry") from None
        finally:
            if future is None or future.done():
                self._turn.release()
            else:
                # The caller gave up (deadline, cancel) but the child is still exporting: the
                # next export waits for it, so two never run in the child at once.
                future.add_done_callback(lambda _: self._release_soon())
        return outcome.unwrap()

    def _release_soon(self) -> None:
        # called on the executor's thread: the lock belongs to the event loop
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._turn.release)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _deadline(doing: str) -> ServiceError:
    return ServiceError(
        f"the deadline passed while {doing}: give the call more time, or use SubmitCompile",
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
