"""A cap on the streams one caller holds open at once (Watch* RPCs): one user's hundred
watches must not take the server's slots, or Redis', from everyone else."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .errors import ResourceExhausted


class StreamCap:
    def __init__(self, limit: int, setting: str = "NEURAL_MAX_WATCHES_PER_PRINCIPAL") -> None:
        self.limit = limit
        self.setting = setting
        self._open: dict[str, int] = {}

    def open(self, who: str) -> int:
        """Streams `who` holds open now."""
        return self._open.get(who, 0)

    @contextlib.contextmanager
    def hold(self, who: str) -> Iterator[None]:
        """One stream slot of `who` for the block; RESOURCE_EXHAUSTED when all are taken."""
        if self._open.get(who, 0) >= self.limit:
            raise ResourceExhausted(
                f"you already have {self.limit} streams open, the limit ({self.setting}): "
                "close one first"
            )
        self._open[who] = self._open.get(who, 0) + 1
        try:
            yield
        finally:
            left = self._open[who] - 1
            if left:
                self._open[who] = left
            else:
                del self._open[who]
