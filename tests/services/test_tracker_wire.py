"""A history page encoded column-wise (services/tracker/wire.py) is exactly the response
built message by message, for any step, value, timestamp and key."""

from __future__ import annotations

import random

import pytest
from neural.v1 import tracker_pb2

from services.tracker import wire

EDGE_STEPS = [0, 1, 127, 128, 16_383, 16_384, -1, -(2**63), 2**63 - 1]
EDGE_VALUES = [0.0, -0.0, 1.0, -2.5, 5e-324, 1.7976931348623157e308, 0.1]
EDGE_STAMPS = [0, 1, 999, 1000, -1, -999, -1000, -1001, 1_700_000_000_123, 2**62, -(2**62)]


def one_by_one(
    key: str, steps: list[int], values: list[float], stamps: list[int]
) -> tracker_pb2.GetMetricHistoryResponse:
    response = tracker_pb2.GetMetricHistoryResponse()
    for step, value, ms in zip(steps, values, stamps, strict=True):
        m = response.metrics.add(key=key, value=value, step=step)
        m.timestamp.seconds, m.timestamp.nanos = ms // 1000, ms % 1000 * 1_000_000
    return response


@pytest.mark.parametrize("key", ["loss", "", "train/acc", "ключ", "k" * 250])
def test_wire_bytes_match_message_by_message(key: str) -> None:
    rng = random.Random(key)
    for n in (1, 2, 63, 64, 65, 500):
        steps = [rng.choice([*EDGE_STEPS, rng.randint(-(2**40), 2**40)]) for _ in range(n)]
        values = [rng.choice([*EDGE_VALUES, rng.random()]) for _ in range(n)]
        stamps = [rng.choice([*EDGE_STAMPS, rng.randint(-(2**50), 2**50)]) for _ in range(n)]
        expected = one_by_one(key, steps, values, stamps)
        parsed = tracker_pb2.GetMetricHistoryResponse.FromString(
            wire.metric_points(key, steps, values, stamps)
        )
        assert parsed == expected
        assert parsed.SerializeToString() == expected.SerializeToString()
        filled = tracker_pb2.GetMetricHistoryResponse(next_page_token="t")
        wire.fill(filled, key, tuple(steps), tuple(values), tuple(stamps))
        assert list(filled.metrics) == list(expected.metrics) and filled.next_page_token == "t"


def test_an_empty_page_is_no_bytes() -> None:
    assert wire.metric_points("loss", [], [], []) == b""
