"""The write side shared by both databases: a batch's newest point per key, and its split into
a trickle of rows and blocks of packed arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .columns import STAMP, STEP, VALUE

BLOCK_FROM = 32  # a key with this many points in one batch is stored as a block


class Batch(NamedTuple):
    """Metric points as columns, the way they travel from a request to the driver: nothing
    is built per point in between."""

    keys: Sequence[str]
    steps: Sequence[int]
    values: Sequence[float]
    timestamps: Sequence[int]  # ms since the epoch; 0 means "now" until stored


class Newest(NamedTuple):
    """The newest point of one key in a batch (it may move tracker_latest_metrics)."""

    key: str
    step: int
    value: float
    timestamp: int


class Block(NamedTuple):
    """A key's points from one batch as one row: the arrays in arrival order, packed."""

    key: str
    first_step: int
    last_step: int
    point_count: int
    steps: bytes
    values: bytes
    timestamps: bytes


def newest(batch: Batch) -> list[Newest]:
    """Per key, the point with the highest (step, timestamp); the later one on a tie."""
    keys, steps, values, stamps = batch
    if len(set(keys)) == 1:  # the usual batch: one series, searched in C
        top = max(steps)
        if steps.count(top) == 1:
            i = len(steps) - 1 - steps[::-1].index(top)
        else:
            _, _, i = max(zip(steps, stamps, range(len(steps)), strict=True))
        return [Newest(keys[i], steps[i], values[i], stamps[i])]
    best: dict[str, tuple[int, int, int]] = {}
    for i, (key, step, stamp) in enumerate(zip(keys, steps, stamps, strict=True)):
        old = best.get(key)
        if old is None or (step, stamp) >= old[:2]:
            best[key] = (step, stamp, i)
    return [Newest(k, s, values[i], t) for k, (s, t, i) in sorted(best.items())]


def pack(key: str, steps: Sequence[int], values: Sequence[float], stamps: Sequence[int]) -> Block:
    """A key's points as a block (Columns.unpack reads them back)."""
    s = np.array(steps, STEP)
    return Block(
        key,
        int(s.min()),
        int(s.max()),
        len(s),
        s.tobytes(),
        np.array(values, VALUE).tobytes(),
        np.array(stamps, STAMP).tobytes(),
    )


def split(batch: Batch) -> tuple[Batch, list[Block]]:
    """The batch's trickle (keys with few points, as rows) and its blocks."""
    keys = batch.keys
    if len(keys) < BLOCK_FROM:
        return batch, []
    if len(set(keys)) == 1:
        return Batch((), (), (), ()), [pack(keys[0], *batch[1:])]
    where: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        where.setdefault(key, []).append(i)
    rows: list[int] = []
    blocks = []
    for key, at in where.items():
        if len(at) < BLOCK_FROM:
            rows.extend(at)
        else:
            blocks.append(pack(key, *([column[i] for i in at] for column in batch[1:])))
    rows.sort()
    trickle = Batch(*([column[i] for i in rows] for column in batch))
    return trickle, blocks
