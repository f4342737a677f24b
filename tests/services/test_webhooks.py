"""Webhooks from the service kit: signing, validation, and delivery through a real Dramatiq
worker (in this process), real Redis, PostgreSQL and SQLite, to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from neural.v1 import common_pb2
from service_kit import db, webhooks
from service_kit.errors import InvalidArgument
from service_kit.jobs import RUNNING, SUCCEEDED, JobRecord, JobStore, job_table, now
from sqlalchemy import MetaData, Table
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.services.conftest import REDIS_PORT, redis_url
from tests.services.receiver import Receiver

REDIS_DB = 11
REDIS_URL = redis_url(REDIS_DB)
SECRET = "whsec-" + "k" * 20
# Short backoffs and timeouts keep the retries quick; the production defaults are seconds.
FAST = webhooks.DeliveryOptions(
    max_retries=4,
    min_backoff_ms=50,
    max_backoff_ms=400,
    timeout_ms=1000,
    connect_timeout_ms=500,
    allow_private=True,  # the receiver listens on loopback
)


def hook(url: str, secret: str = SECRET, events: tuple[str, ...] = ()) -> common_pb2.Webhook:
    return common_pb2.Webhook(url=url, secret=secret, events=list(events))


# ------------------------------------------------------------------ signing


def test_a_signature_verifies_only_with_its_secret_and_body() -> None:
    body = b'{"event":"completed"}'
    header = f"sha256={webhooks.sign(SECRET, body)}"
    assert webhooks.verify(SECRET, body, header)
    assert not webhooks.verify("another-secret-of-length", body, header)
    assert not webhooks.verify(SECRET, body + b" ", header)
    assert not webhooks.verify(SECRET, body, webhooks.sign(SECRET, body))  # no scheme
    assert not webhooks.verify(SECRET, body, header.replace("sha256=", "sha1="))
    # the reference: hex HMAC-SHA256 of the raw body
    assert webhooks.sign(SECRET, body) == hmac.new(SECRET.encode(), body, sha256).hexdigest()


def test_the_headers_name_the_event_and_the_delivery_and_sign_the_body() -> None:
    h = webhooks.headers(SECRET, b"{}", "started", "d-1")
    assert h["Content-Type"] == "application/json"
    assert h["X-Neural-Event"] == "started" and h["X-Neural-Delivery"] == "d-1"
    assert webhooks.verify(SECRET, b"{}", h["X-Neural-Signature"])


# ------------------------------------------------------------------ validation


def test_valid_hooks_become_stored_dicts_with_events_in_a_fixed_order() -> None:
    out = webhooks.validate(
        [
            hook("https://example.com/hooks?x=1"),
            hook("http://10.0.0.1:8080/h", events=("failed", "completed", "completed")),
        ]
    )
    assert out == [
        {"url": "https://example.com/hooks?x=1", "secret": SECRET, "events": []},
        {"url": "http://10.0.0.1:8080/h", "secret": SECRET, "events": ["completed", "failed"]},
    ]
    assert webhooks.validate([]) == []


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (hook("ftp://example.com/x"), "webhooks[0].url", "http"),
        (hook("https:///path-only"), "webhooks[0].url", "host"),
        (hook(""), "webhooks[0].url", "required"),
        (hook("https://user:pw@example.com/"), "webhooks[0].url", "credentials"),
        (hook("https://example.com/a b"), "webhooks[0].url", "spaces"),
        (hook("https://example.com:99999/"), "webhooks[0].url", "not a valid URL"),
        (hook("https://example.com/" + "a" * 2100), "webhooks[0].url", "2048"),
        (hook("https://example.com/", secret=""), "webhooks[0].secret", "required"),
        (hook("https://example.com/", secret="short"), "webhooks[0].secret", "16"),
        (hook("https://example.com/", events=("done",)), "webhooks[0].events", "'done'"),
    ],
)
def test_a_bad_hook_is_invalid_argument_naming_its_field(
    bad: common_pb2.Webhook, field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        webhooks.validate([bad])
    [violation] = info.value.violations
    assert violation.field == field and words in violation.description


def test_more_than_ten_hooks_are_refused() -> None:
    with pytest.raises(InvalidArgument) as info:
        webhooks.validate([hook(f"https://example.com/{i}") for i in range(11)])
    assert [v.field for v in info.value.violations] == ["webhooks"]


# ------------------------------------------------------------------ sending (no worker)


class RecordingActor:
    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send(self, *args: Any) -> None:
        self.sent.append(args)


def record(hooks: list[dict[str, Any]]) -> JobRecord:
    return JobRecord("job-1", "compile", RUNNING, "alice", {"webhooks": hooks}, created_at=now())


async def test_events_go_to_subscribed_hooks_and_messages_never_carry_the_secret() -> None:
    actor = RecordingActor()
    sender = webhooks.WebhookSender(actor, None, progress_interval=0)  # type: ignore[arg-type]
    hooks = webhooks.validate(
        [hook("https://a.example/"), hook("https://b.example/", events=("completed",))]
    )
    for event in ("started", "progress", "completed", "queued"):
        await sender.job_event(None, record(hooks), event)  # type: ignore[arg-type]
    assert [(a[1], a[2]) for a in actor.sent] == [
        (0, "started"),
        (0, "progress"),
        (0, "completed"),
        (1, "completed"),
    ]
    assert len({a[3] for a in actor.sent}) == 4  # a delivery id per event and hook
    assert SECRET not in json.dumps(actor.sent)
    assert actor.sent[0][4]["job"]["state"] == RUNNING


async def test_progress_events_are_sent_at_most_once_per_interval() -> None:
    actor = RecordingActor()
    sender = webhooks.WebhookSender(actor, None, progress_interval=60)  # type: ignore[arg-type]
    hooks = webhooks.validate([hook("https://a.example/")])
    for event in ("progress", "progress", "progress", "completed"):
        await sender.job_event(None, record(hooks), event)  # type: ignore[arg-type]
    assert [a[2] for a in actor.sent] == ["progress", "completed"]


# ------------------------------------------------------------------ delivering (a real worker)


@dataclass
class Kit:
    engine: AsyncEngine
    store: JobStore
    deliveries: Table
    broker: RedisBroker
    worker: dramatiq.Worker
    queue: str

    async def settle(self) -> None:
        """Until no delivery is queued, waiting for a retry, or running: what Dramatiq's own
        testing guide does (broker.join, then worker.join)."""

        def join() -> None:
            self.broker.join(self.queue, timeout=30_000)
            self.worker.join()

        await asyncio.to_thread(join)


@pytest.fixture
async def kit(db_url: str) -> AsyncIterator[Kit]:
    redis.Redis(port=REDIS_PORT, db=REDIS_DB).flushdb()
    metadata = MetaData()
    jobs = job_table(metadata, "whtest")
    deliveries = webhooks.delivery_table(metadata, "whtest")
    engine = db.make_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    broker = RedisBroker(url=REDIS_URL)
    actor = webhooks.declare_actor("whtest", db_url, jobs, deliveries, FAST, broker)
    assert actor.queue_name == "whtest.webhooks"
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    sender = webhooks.WebhookSender(actor, deliveries, progress_interval=0)
    store = JobStore(engine, jobs, REDIS_URL, sender)
    try:
        yield Kit(engine, store, deliveries, broker, worker, actor.queue_name)
    finally:
        await asyncio.to_thread(worker.stop)
        broker.close()
        await store.redis.aclose()
        await engine.dispose()


async def attempts(
    kit: Kit, job_id: str, done: Callable[[list[webhooks.Delivery]], bool], timeout: float = 30
) -> list[webhooks.Delivery]:
    """The job's recorded attempts, once `done` holds for them."""
    deadline = time.monotonic() + timeout
    while True:
        found = (await kit.store.deliveries([job_id])).get(job_id, [])
        if done(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def by_delivery(found: list[webhooks.Delivery]) -> dict[str, list[webhooks.Delivery]]:
    out: dict[str, list[webhooks.Delivery]] = {}
    for d in found:
        out.setdefault(d.delivery_id, []).append(d)
    return out


async def test_a_receiver_failing_twice_gets_exactly_one_accepted_delivery_per_event(
    kit: Kit,
) -> None:
    with Receiver(fail_first=2) as rx:
        hooks = webhooks.validate([hook(rx.url)])
        rec = await kit.store.create("compile", "alice", {"webhooks": hooks})
        await kit.store.update(rec.id, "started", state=RUNNING, started_at=now())
        await kit.store.update(rec.id, "progress", progress=0.5)
        await kit.store.update(
            rec.id,
            "completed",
            "done",
            state=SUCCEEDED,
            ended_at=now(),
            progress=1.0,
            result="models/m-1",
        )
        found = await attempts(kit, rec.id, lambda f: sum(d.delivered for d in f) == 3)
        await kit.settle()  # a wrong extra retry would have arrived by now
        accepted = rx.accepted()
    assert sorted(r.event for r in accepted) == ["completed", "progress", "started"]
    assert len(rx.received) == 9  # 500, 500, then 200 for each event
    for r in accepted:
        assert r.signed_by(SECRET) and not r.signed_by("not-the-secret-at-all")
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["delivery_id"] == r.delivery and body["event"] == r.event
        assert body["attempt"] == 3 and body["job"]["id"] == rec.id and body["timestamp"]
        assert "request" not in body["job"] and SECRET not in r.body.decode()
    completed = next(r.json() for r in accepted if r.event == "completed")
    assert completed["message"] == "done"
    assert completed["job"]["state"] == SUCCEEDED and completed["job"]["result"] == "models/m-1"
    # every try of one event carries the same delivery id; the receiver can de-duplicate on it
    assert len({r.delivery for r in rx.received}) == 3
    # every attempt is recorded on the job
    groups = by_delivery(found)
    assert {ds[0].event for ds in groups.values()} == {"started", "progress", "completed"}
    for ds in groups.values():
        assert [(d.attempt, d.status_code, d.delivered) for d in ds] == [
            (1, 500, False),
            (2, 500, False),
            (3, 200, True),
        ]
        assert ds[0].error == "answered 500" and ds[2].error == ""
    msg = webhooks.to_proto(found[-1])
    assert msg.url == rx.url and msg.delivered and msg.status_code == 200 and msg.time.seconds
    assert SECRET not in str([webhooks.to_proto(d) for d in found])


async def test_a_slow_receiver_is_a_failed_attempt_retried_and_never_slows_the_job(
    kit: Kit,
) -> None:
    with Receiver(slow_first=3.0) as rx:
        rec = await kit.store.create(
            "compile", "alice", {"webhooks": webhooks.validate([hook(rx.url)])}
        )
        started = time.monotonic()
        await kit.store.update(rec.id, "started", state=RUNNING, started_at=now())
        assert time.monotonic() - started < 0.5  # the POST happens elsewhere
        found = await attempts(kit, rec.id, lambda f: any(d.delivered for d in f))
    assert [(d.attempt, d.delivered) for d in found] == [(1, False), (2, True)]
    assert found[0].error == "no answer within 1 s" and found[0].status_code == 0
    assert len(rx.accepted()) == 1


async def test_a_refusing_receiver_is_not_retried(kit: Kit) -> None:
    with Receiver(status=404) as rx:
        rec = await kit.store.create(
            "compile", "alice", {"webhooks": webhooks.validate([hook(rx.url)])}
        )
        await kit.store.update(rec.id, "failed", "bad", state="failed", ended_at=now())
        await attempts(kit, rec.id, lambda f: len(f) >= 1)
        await kit.settle()  # a wrong retry would have run by now
        found = await attempts(kit, rec.id, lambda f: True)
    assert [(d.attempt, d.status_code, d.delivered) for d in found] == [(1, 404, False)]
    assert found[0].error == "answered 404: not retried" and len(rx.received) == 1


async def test_an_unreachable_receiver_is_retried_until_it_gives_up(kit: Kit) -> None:
    from tests.services.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    rec = await kit.store.create("compile", "alice", {"webhooks": webhooks.validate([hook(url)])})
    await kit.store.cancel(rec.id, None)  # a queued job is cancelled at once: "cancelled"
    found = await attempts(kit, rec.id, lambda f: len(f) == FAST.max_retries + 1)
    assert [d.attempt for d in found] == [1, 2, 3, 4, 5]
    assert {d.event for d in found} == {"cancelled"} and not any(d.delivered for d in found)
    assert "ConnectError" in found[0].error and found[-1].error.endswith("gave up after 5 attempts")


async def test_redis_down_records_an_unsent_delivery_and_the_job_goes_on(tmp_path: Path) -> None:
    metadata = MetaData()
    jobs = job_table(metadata, "whdown")
    deliveries = webhooks.delivery_table(metadata, "whdown")
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    engine = db.make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    broker = RedisBroker(url="redis://127.0.0.1:1/0")  # nothing listens there
    actor = webhooks.declare_actor("whdown", url, jobs, deliveries, FAST, broker)
    store = JobStore(engine, jobs, REDIS_URL, webhooks.WebhookSender(actor, deliveries))
    plain = JobStore(engine, jobs, REDIS_URL)
    try:
        rec = await store.create(
            "compile", "alice", {"webhooks": webhooks.validate([hook("https://example.com/")])}
        )
        done = await store.update(rec.id, "completed", state=SUCCEEDED, ended_at=now())
        assert done.state == SUCCEEDED
        [d] = (await store.deliveries([rec.id]))[rec.id]
        assert (d.attempt, d.delivered, d.event) == (0, False, "completed")
        assert d.error.startswith("not queued:")
        assert await plain.deliveries([rec.id]) == {}  # a store without a sender: as before
    finally:
        await store.redis.aclose()
        await plain.redis.aclose()
        await engine.dispose()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.7/x"]
)
async def test_hooks_may_not_reach_private_addresses_by_default(url: str) -> None:
    strict = webhooks.DeliveryOptions(timeout_ms=500, connect_timeout_ms=200)
    attempt = await webhooks.post(url, SECRET, b"{}", "started", "d1", strict)
    assert not attempt.delivered and not attempt.retry
    assert "non-public address" in attempt.error
