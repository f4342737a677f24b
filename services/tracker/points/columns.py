"""A series' points as numpy columns, and the little-endian dtypes blocks are packed in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

STEP, VALUE, STAMP = np.dtype("<i8"), np.dtype("<f8"), np.dtype("<i8")


class Columns(NamedTuple):
    """Points of one series in (step, timestamp) order."""

    steps: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray

    @classmethod
    def of(cls, rows: Sequence[Sequence[Any]]) -> Columns:
        """From (step, value, timestamp) rows."""
        if not rows:
            return NONE
        steps, values, stamps = zip(*rows, strict=True)
        return cls(np.array(steps, STEP), np.array(values, VALUE), np.array(stamps, STAMP))

    @classmethod
    def unpack(cls, steps: bytes, values: bytes, stamps: bytes) -> Columns:
        """From a block's packed arrays (see batches.pack)."""
        return cls(
            np.frombuffer(steps, STEP), np.frombuffer(values, VALUE), np.frombuffer(stamps, STAMP)
        )

    def __len__(self) -> int:
        return len(self.steps)

    def rows(self) -> list[tuple[int, float, int]]:
        columns = (self.steps.tolist(), self.values.tolist(), self.timestamps.tolist())
        return list(zip(*columns, strict=True))


NONE = Columns(np.empty(0, STEP), np.empty(0, VALUE), np.empty(0, STAMP))
