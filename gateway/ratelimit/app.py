"""Wiring: the limits file, the Redis client and the servicer, for the server and tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import redis.asyncio as aioredis
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from service_kit.server import ServiceSpec
from service_kit.settings import Settings

from . import config
from .service import METHOD, SERVICE, RateLimitService, RedisState
from .window import DECIDE, SlidingWindows


@dataclass
class App:
    client: aioredis.Redis
    service: RateLimitService
    spec: ServiceSpec
    # Envoy alone calls this service, inside the gateway: it has no callers to authenticate.
    auth: None = None

    async def close(self) -> None:
        await self.client.aclose()


def redis_client(settings: Settings) -> aioredis.Redis:
    timeout = settings.ratelimit_redis_timeout_ms / 1000
    # One try, briefly: Envoy gives the whole decision 0.25 s, and a call that waited for
    # retries would be decided by Envoy's timeout instead of by NEURAL_RATELIMIT_FAIL_OPEN.
    return aioredis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


async def warm(client: aioredis.Redis) -> None:
    """Load the decision's script into Redis: the first call's EVALSHA would otherwise miss
    and send it (a second round trip). Without Redis the service fails open or closed as
    configured, not an error of the warm-up: the first decision after Redis returns loads it."""
    with contextlib.suppress(RedisError, OSError):
        await client.script_load(DECIDE)


async def build(settings: Settings) -> App:
    limits = config.load(settings.ratelimit_config or None)
    client = redis_client(settings)
    redis = RedisState(client, settings.ratelimit_fail_open)
    service = RateLimitService(limits, SlidingWindows(client, limits.domain), redis)
    spec = ServiceSpec(
        "ratelimit",
        [(rls_pb2_grpc.add_RateLimitServiceServicer_to_server, service, SERVICE)],
        public_methods=frozenset({METHOD}),
        health_checks=[redis.health],
        warmup=lambda: warm(client),
    )
    return App(client, service, spec)
