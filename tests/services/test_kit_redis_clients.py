"""The services' Redis clients survive a Redis restart: the first command on a connection the
server closed goes out again on a new one, rather than failing the caller's RPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from service_kit.redis_clients import async_client

from tests.services.local_redis import LocalRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def local_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    server = LocalRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_a_restart_of_redis_costs_the_caller_nothing(local_redis: LocalRedis) -> None:
    client = async_client(local_redis.url, socket_timeout=2, socket_connect_timeout=2)
    plain = aioredis.from_url(local_redis.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert await client.set("k", "before") and await plain.ping()
        local_redis.stop()
        local_redis.start()
        assert await client.get("k") is None  # a new server, reached on the first try
        # what the services did before: the first command on the closed connection failed
        with pytest.raises(redis.ConnectionError):
            await plain.ping()
    finally:
        await client.aclose()
        await plain.aclose()


async def test_a_redis_that_is_down_still_fails_at_once(local_redis: LocalRedis) -> None:
    client = async_client(local_redis.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.ping()
        local_redis.stop()
        with pytest.raises(redis.ConnectionError):
            await client.ping()
    finally:
        await client.aclose()
