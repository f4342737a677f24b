"""The service kit's broker: an idle consumer wakes when a message is enqueued instead of at
its next poll, and Dramatiq's delivery guarantees (acks, a dead worker's messages handed out
again) are as they were."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from service_kit.broker import WakingRedisBroker

from tests.services.conftest import REDIS_URL
from tests.waiting import until

pytestmark = pytest.mark.integration

LONG_POLL_MS = 10_000  # an idle consumer looks again this rarely without a wake-up


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"test-wake-{uuid.uuid4().hex[:8]}"
    yield ns
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{ns}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def _message(queue: str, n: int) -> dramatiq.Message[Any]:
    return dramatiq.Message(queue_name=queue, actor_name="noop", args=(n,), kwargs={}, options={})


class _Pulling:
    """A thread calling next() on a consumer until it hands out a message."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.got: list[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set() and not self.got:
            message = next(self.consumer)
            if message is not None:
                self.got.append(message)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(LONG_POLL_MS / 1000 * 2 + 5)
        self.consumer.close()


def _polled(broker: RedisBroker) -> bool:
    """True once `broker` has run a command on Redis (its heartbeat is written by each)."""
    beats = redis.Redis.from_url(REDIS_URL)
    try:
        return beats.zscore(f"{broker.namespace}:__heartbeats__", broker.broker_id) is not None
    finally:
        beats.close()


@pytest.mark.parametrize("delay", [None, 0])
def test_an_idle_consumer_gets_a_message_long_before_its_next_poll(
    namespace: str, delay: int | None
) -> None:
    # the server and the worker are separate processes with brokers of their own
    worker = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    sender = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    queue = "jobs" if delay is None else "jobs.DQ"  # a delayed message goes to the delay queue
    consumer = worker.consume(queue, prefetch=1, timeout=LONG_POLL_MS)
    consumer.misses = 32  # idle a long while: its next sleep would be the whole poll interval
    pulling = _Pulling(consumer)
    try:
        until(lambda: _polled(worker), 5, "the consumer's first fetch, which finds nothing")
        sender.enqueue(_message("jobs", 1), delay=delay)
        # well before the 5-10 s the consumer would otherwise sleep
        until(lambda: pulling.got, 3, "the message, woken rather than polled")
        assert pulling.got[0].args == (1,)
    finally:
        pulling.close()


def test_a_message_enqueued_without_a_wake_up_is_still_polled(namespace: str) -> None:
    worker = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    plain = RedisBroker(url=REDIS_URL, namespace=namespace)  # publishes no wake-up
    pulling = _Pulling(worker.consume("jobs", prefetch=1, timeout=100))
    try:
        until(lambda: _polled(worker), 5, "the consumer's first fetch")
        plain.enqueue(_message("jobs", 2))
        until(lambda: pulling.got, 10, "the message, found by polling")
        assert pulling.got[0].args == (2,)
    finally:
        pulling.close()


def test_a_dead_workers_message_is_handed_out_again_and_an_acked_one_is_not(
    namespace: str,
) -> None:
    sender = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    sender.enqueue(_message("jobs", 1))
    sender.enqueue(_message("jobs", 2))
    # a worker takes both, acks one and dies (its heartbeat stops) with the other unacked
    dying = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    taken = dying.consume("jobs", prefetch=2, timeout=100)
    first = next(taken)
    second = next(taken)
    assert {first.args, second.args} == {(1,), (2,)}
    taken.ack(first)
    taken.close()
    # another worker, whose every command does the broker's maintenance, which requeues the
    # messages of a worker whose heartbeat is older than the timeout
    survivor = WakingRedisBroker(
        url=REDIS_URL, namespace=namespace, heartbeat_timeout=500, maintenance_chance=1_000_000
    )
    pulling = _Pulling(survivor.consume("jobs", prefetch=2, timeout=100))
    try:
        until(lambda: pulling.got, 10, "the dead worker's unacked message")
        assert pulling.got[0].args == second.args
        pulling.consumer.ack(pulling.got[0])
    finally:
        pulling.close()
    assert redis.Redis.from_url(REDIS_URL).llen(f"{namespace}:jobs") == 0


def test_a_worker_runs_an_actor_on_the_waking_broker(namespace: str) -> None:
    broker = WakingRedisBroker(url=REDIS_URL, namespace=namespace)
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="jobs", max_retries=0)
    def mark() -> None:
        ran.set()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        mark.send()
        until(ran.is_set, 10, "the actor to run")
    finally:
        worker.stop()
