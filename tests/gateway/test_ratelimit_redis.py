"""The rate-limit service over the real Redis, in process: the sliding window, its atomicity
under concurrent callers, shadow mode, and failing open or closed without Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from envoy.service.ratelimit.v3 import rls_pb2
from prometheus_client import REGISTRY
from service_kit import errors
from service_kit.settings import Settings, load

from gateway.ratelimit import config
from gateway.ratelimit.app import redis_client
from gateway.ratelimit.service import RateLimitService, RedisState
from gateway.ratelimit.window import SlidingWindows
from tests.services.conftest import free_port, redis_url
from tests.waiting import until_async

pytestmark = pytest.mark.integration

Code = rls_pb2.RateLimitResponse.Code
REDIS_DB = 12
COMPILE = "/neural.v1.CompilerService/Compile"


def settings(url: str) -> Settings:
    # A generous timeout: a busy test machine must not turn a slow answer into a failure.
    return replace(load("ratelimit"), redis_url=url, ratelimit_redis_timeout_ms=5000)


def limits(**changes: Any) -> config.Config:
    data: dict[str, Any] = {
        "roles": {
            "user": {"requests": 5, "window_seconds": 60},
            "viewer": {"requests": 3, "window_seconds": 2},
        },
        "default_role": "user",
        "anonymous": {"requests": 2, "window_seconds": 60},
        "costs": [{"name": "compile", "paths": [COMPILE], "cost": 2}],
        **changes,
    }
    return config.parse(data)


Connect = Callable[[], aioredis.Redis]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Makes Redis clients (each with connections of its own) on a flushed database."""
    made: list[aioredis.Redis] = []

    def new() -> aioredis.Redis:
        made.append(redis_client(settings(redis_url(REDIS_DB))))
        return made[-1]

    await new().flushdb()
    yield new
    for client in made:
        await client.aclose()


def make(client: aioredis.Redis, cfg: config.Config, fail_open: bool = True) -> RateLimitService:
    return RateLimitService(cfg, SlidingWindows(client, cfg.domain), RedisState(client, fail_open))


def call(subject: str, role: str = "user", path: str = "/x") -> rls_pb2.RateLimitRequest:
    req = rls_pb2.RateLimitRequest(domain="neural")
    d = req.descriptors.add()
    for key, value in (("subject", subject), ("role", role), ("path", path)):
        d.entries.add(key=key, value=value)
    return req


async def test_call_n_plus_one_in_the_window_is_over_limit_with_remaining_and_reset(
    connect: Connect,
) -> None:
    svc = make(connect(), limits())
    who = uuid.uuid4().hex
    remaining = []
    for _ in range(5):
        answer = await svc.ShouldRateLimit(call(who), None)
        assert answer.overall_code == Code.OK
        remaining.append(answer.statuses[0].limit_remaining)
        assert answer.statuses[0].current_limit.requests_per_unit == 5
        assert 0 < answer.statuses[0].duration_until_reset.seconds <= 60
    assert remaining == [4, 3, 2, 1, 0]
    over = await svc.ShouldRateLimit(call(who), None)
    assert over.overall_code == Code.OVER_LIMIT
    [status] = over.statuses
    assert status.code == Code.OVER_LIMIT
    assert status.limit_remaining == 0
    assert 55 <= status.duration_until_reset.seconds <= 60
    [header] = over.response_headers_to_add
    assert header.key == "retry-after" and 55 <= int(header.value) <= 60
    # Another subject has a window of its own.
    assert (await svc.ShouldRateLimit(call(uuid.uuid4().hex), None)).overall_code == Code.OK


async def test_a_heavy_call_costs_more_and_a_refused_one_counts_nowhere(
    connect: Connect,
) -> None:
    svc = make(connect(), limits())
    who = uuid.uuid4().hex
    answers = [await svc.ShouldRateLimit(call(who, path=COMPILE), None) for _ in range(3)]
    assert [a.overall_code for a in answers] == [Code.OK, Code.OK, Code.OVER_LIMIT]
    assert answers[1].statuses[0].limit_remaining == 1
    # The refused Compile took nothing: one unit is still there for a cheap call.
    cheap = await svc.ShouldRateLimit(call(who), None)
    assert cheap.overall_code == Code.OK
    assert cheap.statuses[0].limit_remaining == 0


async def test_a_call_is_admitted_in_every_window_or_in_none(
    connect: Connect,
) -> None:
    svc = make(connect(), limits())
    who, address = uuid.uuid4().hex, f"10.0.{uuid.uuid4().int % 250}.1"

    def both() -> rls_pb2.RateLimitRequest:
        req = call(who)
        req.descriptors.add().entries.add(key="remote_address", value=address)
        return req

    assert (await svc.ShouldRateLimit(both(), None)).overall_code == Code.OK
    assert (await svc.ShouldRateLimit(both(), None)).overall_code == Code.OK
    over = await svc.ShouldRateLimit(both(), None)  # the address's window (2) is full
    assert over.overall_code == Code.OVER_LIMIT
    assert [s.code for s in over.statuses] == [Code.OK, Code.OVER_LIMIT]
    # The subject's window did not count the refused call.
    assert over.statuses[0].limit_remaining == 3
    assert (await svc.ShouldRateLimit(call(who), None)).statuses[0].limit_remaining == 2


async def test_the_window_slides(connect: Connect) -> None:
    svc = make(connect(), limits())
    who = uuid.uuid4().hex  # a viewer: 3 calls in any 2 s

    async def ask() -> rls_pb2.RateLimitResponse:
        return await svc.ShouldRateLimit(call(who, "viewer"), None)

    first = time.monotonic()
    assert (await ask()).overall_code == Code.OK
    # The next two half a window later: a fixed window would forget all three at once.
    await until_async(lambda: time.monotonic() - first >= 1, 5, "half the window")
    assert (await ask()).overall_code == Code.OK
    assert (await ask()).overall_code == Code.OK
    over = await ask()
    assert over.overall_code == Code.OVER_LIMIT
    assert 1 <= over.statuses[0].duration_until_reset.seconds <= 2

    deadline = time.monotonic() + 5
    while (answer := await ask()).overall_code != Code.OK:
        assert time.monotonic() < deadline, "the window never slid"
        await asyncio.sleep(0.02)
    # Room came back when the first call left the window, not before ...
    assert time.monotonic() - first >= 1.95
    # ... for one call only (the refused calls in between counted nowhere).
    assert answer.statuses[0].limit_remaining == 0
    assert (await ask()).overall_code == Code.OVER_LIMIT


async def test_eight_concurrent_clients_never_exceed_the_limit_in_total(
    connect: Connect,
) -> None:
    cfg = limits(roles={"user": {"requests": 40, "window_seconds": 60}})
    who = uuid.uuid4().hex
    services = [make(connect(), cfg) for _ in range(8)]

    async def client(svc: RateLimitService) -> list[bool]:
        results = []
        for _ in range(15):  # 120 calls in all, 40 of them fit
            answer = await svc.ShouldRateLimit(call(who), None)
            results.append(answer.overall_code == Code.OK)
        return results

    results = await asyncio.gather(*(client(svc) for svc in services))
    assert sum(sum(r) for r in results) == 40
    assert sum(len(r) for r in results) == 120
    # What Redis holds agrees: exactly the limit is used.
    counters = await connect().hgetall(f"neural:ratelimit:neural:subject:{who}:counters")
    assert int(counters[b"used"]) == 40


async def test_shadow_mode_reports_but_never_refuses(connect: Connect) -> None:
    svc = make(connect(), limits(shadow_mode=True))
    who = uuid.uuid4().hex
    answers = [await svc.ShouldRateLimit(call(who), None) for _ in range(8)]
    assert all(a.overall_code == Code.OK for a in answers)
    assert all(s.code == Code.OK for a in answers for s in a.statuses)
    assert [a.statuses[0].limit_remaining for a in answers] == [4, 3, 2, 1, 0, 0, 0, 0]
    assert not any(a.response_headers_to_add for a in answers)


def redis_up() -> float | None:
    return REGISTRY.get_sample_value("neural_ratelimit_redis_up")


def unreachable() -> aioredis.Redis:
    return redis_client(settings(f"redis://127.0.0.1:{free_port()}/0"))


async def test_without_redis_failing_open_admits_and_stays_serving() -> None:
    client = unreachable()
    try:
        svc = make(client, limits(), fail_open=True)
        answer = await svc.ShouldRateLimit(call("alice"), None)
        assert answer.overall_code == Code.OK
        assert [s.code for s in answer.statuses] == [Code.OK]
        assert not answer.statuses[0].HasField("current_limit")
        assert redis_up() == 0  # the degradation is visible in the metrics
        assert await svc.redis.health() is True
    finally:
        await client.aclose()


async def test_without_redis_failing_closed_is_unavailable_and_not_serving() -> None:
    client = unreachable()
    try:
        svc = make(client, limits(), fail_open=False)
        with pytest.raises(errors.Unavailable, match="fails closed"):
            await svc.ShouldRateLimit(call("alice"), None)
        assert await svc.redis.health() is False
    finally:
        await client.aclose()


async def test_redis_coming_back_restores_enforcement(connect: Connect) -> None:
    svc = make(connect(), limits(), fail_open=False)
    svc.redis.failed(ConnectionError("down a moment ago"))
    assert redis_up() == 0
    assert await svc.redis.health() is True
    assert redis_up() == 1
    assert (await svc.ShouldRateLimit(call(uuid.uuid4().hex), None)).overall_code == Code.OK
