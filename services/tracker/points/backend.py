"""What each database's point store does."""

from __future__ import annotations

from abc import ABC, abstractmethod

from .batches import Batch, Newest
from .columns import Columns


class UnknownRun(Exception):
    """The run is gone (its latest-metrics row has nowhere to point)."""


class PointStore(ABC):
    """Appends batches and reads pages of one series."""

    @abstractmethod
    async def append(self, run_id: str, batch: Batch, latest: list[Newest]) -> None:
        """Store the batch (its timestamps filled in) and move each key's latest point
        forward, atomically; UnknownRun when the run does not exist."""

    @abstractmethod
    async def page(
        self, run_id: str, key: str, from_step: int | None, skip: int, limit: int
    ) -> Columns:
        """At most `limit` points in order, from `from_step` on (the first step when None),
        skipping `skip`."""

    @abstractmethod
    async def count(self, run_id: str, key: str) -> int:
        """How many points the series has."""

    @abstractmethod
    async def close(self) -> None: ...
