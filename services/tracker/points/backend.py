"""What each database's point store does."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .batches import Batch, Newest
from .columns import Columns
from .downsample import Span, Summaries


class UnknownRun(Exception):
    """The run is gone (its latest-metrics row has nowhere to point)."""


@dataclass
class Reads:
    """Stored rows the store has read so far, by kind: what a read costs, in a form tests can
    assert on (a block counts as the points it packs)."""

    points: int = 0
    block_spans: int = 0
    summaries: int = 0


class PointStore(ABC):
    """Appends batches (with their summaries) and reads pages and summaries of one series."""

    reads: Reads

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
    async def span(self, run_id: str, key: str) -> Span:
        """The series' size and first and last step, from its top-level summaries."""

    @abstractmethod
    async def summaries(self, run_id: str, key: str, level: int, lo: int, hi: int) -> Summaries:
        """The series' summaries at `level`, buckets `lo` to `hi`, by bucket."""

    @abstractmethod
    async def tops(
        self, run_ids: Sequence[str], keys: Sequence[str]
    ) -> dict[tuple[str, str], tuple[int, Summaries]]:
        """Per (run_id, key) of the runs' series (of the keys; all when none given): its size
        and its top-level summaries, in one statement."""

    async def count(self, run_id: str, key: str) -> int:
        """How many points the series has."""
        return (await self.span(run_id, key)).count

    @abstractmethod
    async def close(self) -> None: ...
