"""A page of metric points as protobuf wire bytes, built column-wise with numpy.

Filling GetMetricHistoryResponse.metrics message by message costs about 2 µs a point from
Python (a Metric and its Timestamp each), which was most of the time of a 10,000-point
page. The same bytes computed over whole columns take a fraction of that, and upb parses
them into the response in under a millisecond. The encoding is protobuf's, field by field:

    metrics (1, LEN) -> Metric { key (1, LEN), value (2, I64), step (3, VARINT),
                                 timestamp (4, LEN) -> Timestamp { seconds (1), nanos (2) } }
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

WIRE_FROM = 64  # points
_U8 = np.uint8
_U64 = np.uint64


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _sizes(u: np.ndarray, most: int) -> np.ndarray:
    """Bytes of each value as a varint (an int64 below zero, as uint64, takes 10)."""
    sizes = np.ones(u.shape, np.int64)
    for k in range(1, most):
        sizes += u >= _U64(1 << (7 * k))
    return sizes


class _Rows:
    """One row of bytes per point, each field in a fixed column slot as wide as its longest
    encoding, and `keep` marking the bytes really there: a row-major compaction then gives the
    messages back to back, so every write is a whole column, never a scatter."""

    def __init__(self, n: int, width: int) -> None:
        # Column-major, so that each column write is contiguous; boolean indexing still
        # reads in row order.
        self.bytes = np.empty((n, width), _U8, order="F")
        self.keep = np.ones((n, width), bool, order="F")
        self.at = 0

    def const(self, data: bytes) -> None:
        self.bytes[:, self.at : self.at + len(data)] = np.frombuffer(data, _U8)
        self.at += len(data)

    def fixed(self, block: np.ndarray) -> None:
        """An (n, k) uint8 block, as is."""
        self.bytes[:, self.at : self.at + block.shape[1]] = block
        self.at += block.shape[1]

    def varint(self, u: np.ndarray, sizes: np.ndarray, slot: int) -> None:
        for k in range(slot):
            more = (sizes > k + 1).astype(_U8) << _U8(7)
            self.bytes[:, self.at + k] = ((u >> _U64(7 * k)) & _U64(0x7F)).astype(_U8) | more
            self.keep[:, self.at + k] = sizes > k
        self.at += slot

    def packed(self) -> bytes:
        return self.bytes[self.keep].tobytes()


def metric_points(
    key: str, steps: Sequence[int], values: Sequence[float], timestamps_ms: Sequence[int]
) -> bytes:
    """Repeated field 1 (`metrics`) of GetMetricHistoryResponse for one key's points, in order.
    Every field is written, zeros included (a parser takes them as set; upb drops them again
    when it serializes)."""
    n = len(steps)
    if n == 0:
        return b""
    name = key.encode()
    head = b"\x0a" + _varint(len(name)) + name  # Metric.key: the same in every point
    step = np.asarray(steps, np.int64).view(_U64)
    ms = np.asarray(timestamps_ms, np.int64)
    seconds = (ms // 1000).view(_U64)  # floor: nanos stay in [0, 1e9) before 1970 too
    nanos = ((ms % 1000) * 1_000_000).view(_U64)
    step_n, sec_n, nanos_n = _sizes(step, 10), _sizes(seconds, 10), _sizes(nanos, 5)
    stamp_len = 2 + sec_n + nanos_n  # at most 17: its own length is one byte
    body_len = len(head) + 9 + 1 + step_n + 2 + stamp_len  # a key is 1000 bytes at most

    rows = _Rows(n, 3 + len(head) + 9 + 11 + 2 + 17)
    rows.const(b"\x0a")  # GetMetricHistoryResponse.metrics
    rows.varint(body_len.view(_U64), _sizes(body_len.view(_U64), 2), 2)  # < 16384: 2 bytes
    rows.const(head)
    rows.const(b"\x11")  # Metric.value, fixed64 little-endian
    rows.fixed(np.asarray(values, "<f8").view(_U8).reshape(n, 8))
    rows.const(b"\x18")  # Metric.step
    rows.varint(step, step_n, 10)
    rows.const(b"\x22")  # Metric.timestamp
    rows.fixed(stamp_len.astype(_U8)[:, None])
    rows.const(b"\x08")  # Timestamp.seconds
    rows.varint(seconds, sec_n, 10)
    rows.const(b"\x10")  # Timestamp.nanos
    rows.varint(nanos, nanos_n, 5)
    return rows.packed()


def fill(response: Any, key: str, steps: Any, values: Any, timestamps_ms: Any) -> None:
    """Append the points to response.metrics (a GetMetricHistoryResponse): short pages
    message by message (numpy's fixed cost per column would dominate), long ones as bytes."""
    if len(steps) >= WIRE_FROM:
        response.MergeFromString(metric_points(key, steps, values, timestamps_ms))
        return
    add = response.metrics.add
    columns = (np.asarray(c).tolist() for c in (steps, values, timestamps_ms))
    for step, value, ms in zip(*columns, strict=True):
        # A dict is the cheapest way to fill the sub-message from Python.
        add(
            key=key,
            value=value,
            step=step,
            timestamp={"seconds": ms // 1000, "nanos": ms % 1000 * 1_000_000},
        )
