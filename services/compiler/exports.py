"""ONNX compiles of the compiler server: lowered straight from the IR in a thread, at most
`capacity` at once.

The lowering (`neural_dsl.backends.export_onnx`) imports no torch, traces nothing and is
thread-safe: most networks take milliseconds, so `Compile` to ONNX stays synchronous. What it
does hold is the network's weights, a few times over while the graph is built and serialised
(a 10^8-parameter network: hundreds of MB), so a server admits `capacity` ONNX compiles at once
(NEURAL_ONNX_EXPORT_QUEUE) and answers one more RESOURCE_EXHAUSTED at once.
"""

from __future__ import annotations

import asyncio

from neural_dsl import Limits
from service_kit.errors import ResourceExhausted

from .compile_step import Artifact, CompileInput, compile_artifact


class ExportQueue:
    def __init__(self, limits: Limits, capacity: int) -> None:
        self.limits = limits
        self.capacity = capacity
        self._held = 0  # compiles running

    @property
    def held(self) -> int:
        """ONNX compiles admitted and not yet answered."""
        return self._held

    async def compile(self, req: CompileInput) -> Artifact:
        """The artifact of `req`, compiled off the event loop."""
        if self._held >= self.capacity:
            raise ResourceExhausted(
                f"{self._held} ONNX compiles are already running on this server, the limit "
                "(NEURAL_ONNX_EXPORT_QUEUE): retry later, or use SubmitCompile"
            )
        self._held += 1
        try:
            return await asyncio.to_thread(compile_artifact, req, self.limits)
        finally:
            self._held -= 1
