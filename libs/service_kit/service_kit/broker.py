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


class QueueDepth:
    """A Prometheus collector of how many messages wait on each queue (ready and delayed),
    read from Redis at scrape time; Dramatiq's own middleware covers in-flight, latency and
    failures from inside the workers."""

    def __init__(self, redis_url: str, queues: list[str], namespace: str = "dramatiq") -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        self.queues = queues
        self.namespace = namespace

    def collect(self):  # type: ignore[no-untyped-def]  # the prometheus_client collector API
        import redis
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "neural_queue_depth", "Messages waiting on a Dramatiq queue", labels=["queue", "kind"]
        )
        try:
            pipe = self.client.pipeline()
            for q in self.queues:
                pipe.llen(f"{self.namespace}:{q}")
                pipe.llen(f"{self.namespace}:{q}.DQ")
            counts = pipe.execute()
        except (redis.RedisError, OSError):
            return  # Redis down: no sample rather than a wrong one
        for i, q in enumerate(self.queues):
            gauge.add_metric([q, "ready"], counts[2 * i])
            gauge.add_metric([q, "delayed"], counts[2 * i + 1])
        yield gauge
