"""The Dramatiq broker every service and worker uses: Redis, from NEURAL_REDIS_URL."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from .settings import Settings

_broker: RedisBroker | None = None


def setup_broker(settings: Settings) -> RedisBroker:
    """Set (once per process) the global broker that actors declare themselves on."""
    global _broker
    if _broker is None:
        _broker = RedisBroker(
            url=settings.redis_url,
            heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
            maintenance_chance=settings.broker_maintenance_chance,
        )
        dramatiq.set_broker(_broker)
    return _broker


async def redis_ping(url: str) -> bool:
    """True when Redis at `url` answers PING within two seconds (a health check)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(await client.ping())
    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
        return False
    finally:
        await client.aclose()
