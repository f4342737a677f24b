"""The Dramatiq broker every service and worker uses: Redis, from NEURAL_REDIS_URL.

Dramatiq's Redis consumer, finding its queue empty, sleeps before it looks again: 5 ms at
first, doubling (with jitter) up to the worker's timeout (`dramatiq_worker_timeout`). A job
submitted to a worker that has been idle a while waits out that sleep. `WakingRedisBroker`
keeps Dramatiq's queues, Lua script, acks, heartbeats and requeues as they are, and adds a
wake-up: `enqueue` publishes on the queue's channel, and an idle consumer waits on its
subscription to that channel instead of sleeping, for no longer than it would have slept, so
a message that comes without a wake-up (requeued from a dead worker, sent by a plain
RedisBroker) is still found by the same polling as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.common import compute_backoff
from dramatiq.errors import ConnectionClosed
from dramatiq.message import Message

from .settings import Settings

log = logging.getLogger(__name__)

_broker: RedisBroker | None = None


class WakingRedisBroker(RedisBroker):
    """A RedisBroker whose idle consumers wake as soon as a message is enqueued on their
    queue (its delay queue included), rather than at their next poll."""

    def wake_channel(self, queue_name: str) -> str:
        return f"{self.namespace}:wake:{queue_name}"

    @property
    def consumer_class(self) -> type[_RedisConsumer]:
        return _WakingConsumer

    def enqueue(self, message: Message, *, delay: int | None = None) -> Message:
        sent = super().enqueue(message, delay=delay)  # its queue_name: the delay queue if any
        try:
            self.client.publish(self.wake_channel(sent.queue_name), b"")
        except redis.RedisError as exc:
            # the message is queued: a consumer's next poll finds it without the wake-up
            log.warning("no wake-up for queue %s: %s", sent.queue_name, exc)
        return sent


class _WakingConsumer(_RedisConsumer):
    """Dramatiq's consumer with its idle sleep replaced by a wait on the queue's wake-up
    channel. The subscription is made before the first fetch and kept, so a wake-up
    published between a fetch that found nothing and the wait is already buffered."""

    def __init__(self, broker: WakingRedisBroker, queue_name: str, prefetch: int, timeout: int):
        super().__init__(broker, queue_name, prefetch, timeout)
        self.pubsub = broker.client.pubsub(ignore_subscribe_messages=True)
        try:
            self.pubsub.subscribe(broker.wake_channel(queue_name))
        except redis.ConnectionError as exc:
            self.pubsub.close()
            raise ConnectionClosed(exc) from None

    def __next__(self) -> Any:
        # Dramatiq's _RedisConsumer.__next__, but for the wait when a fetch finds nothing
        try:
            while True:
                if self.message_cache:
                    data = self.message_cache.pop(0)
                    if data is None:  # as Dramatiq does (its issue #266)
                        continue
                    self.misses = 0
                    message = Message.decode(data)
                    self.queued_message_ids.add(message.message_id)
                    return dramatiq.MessageProxy(message)
                messages = []
                if self.outstanding_message_count < self.prefetch:
                    self.message_cache = messages = self.broker.do_fetch(
                        self.queue_name, self.prefetch - self.outstanding_message_count
                    )
                if not messages:
                    self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=self.timeout)
                    self._wait(backoff_ms / 1000)
                    return None
        except redis.ConnectionError as exc:
            raise ConnectionClosed(exc) from None

    def _wait(self, seconds: float) -> bool:
        """Until a wake-up comes (True) or `seconds` pass (False)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            # None also for the subscription's confirmation: wait on for what is left
            if self.pubsub.get_message(timeout=left) is not None:
                # wake-ups that piled up while this consumer was busy: one fetch answers all
                while self.pubsub.get_message(timeout=0) is not None:
                    pass
                return True
        return False

    def close(self) -> None:
        try:
            self.pubsub.close()
        finally:
            super().close()


def setup_broker(settings: Settings) -> RedisBroker:
    """Set (once per process) the global broker that actors declare themselves on."""
    global _broker
    if _broker is None:
        _broker = WakingRedisBroker(
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
