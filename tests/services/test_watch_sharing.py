"""Watches share one Redis subscription per process, and one caller's watches are capped: a
hundred streams of one user neither take a hundred Redis connections nor starve another
user's watch."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from neural.v1 import tracker_pb2, tracker_pb2_grpc
from service_kit.db import make_engine
from service_kit.errors import ResourceExhausted
from service_kit.fanout import Fanout
from service_kit.jobs import RUNNING, SUCCEEDED, JobRecord, JobStore, job_table, now
from service_kit.streams import StreamCap
from sqlalchemy import MetaData

from services.tracker.events import channel
from tests.services.conftest import REDIS_PORT, redis_url
from tests.services.stack import Stack, pg_stack
from tests.waiting import until, until_async

REDIS_DB = 7


def _subscribers(client: redis.Redis, db: int) -> list[dict]:
    """The connections of database `db` that hold a subscription."""
    return [c for c in client.client_list() if int(c["db"]) == db and int(c["sub"]) > 0]


def test_stream_cap_refuses_the_extra_stream_of_one_caller_only() -> None:
    cap = StreamCap(2)
    with cap.hold("alice"), cap.hold("alice"):
        with pytest.raises(ResourceExhausted) as info, cap.hold("alice"):
            pass
        assert "NEURAL_MAX_WATCHES_PER_PRINCIPAL" in info.value.message
        with cap.hold("bob"):
            assert cap.open("bob") == 1
        assert cap.open("alice") == 2
    assert cap.open("alice") == 0
    with cap.hold("alice"):  # slots come back when the streams end
        pass


@pytest.mark.integration
async def test_fanout_shares_one_subscription_among_many_watchers() -> None:
    db = 14
    sync = redis.Redis(port=REDIS_PORT, db=db)
    client = aioredis.from_url(redis_url(db))
    fanout = Fanout(client, queue_size=4)
    # Pub/sub channels are global to the Redis server, not per db: names of this run's own
    # keep another process's traffic (a second test run, a stack) out of the counts.
    a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    try:
        async with contextlib.AsyncExitStack() as blocks:
            watchers = [
                (name, await blocks.enter_async_context(fanout.watch(name)))
                for name in [a] * 60 + [b] * 40
            ]
            assert sync.pubsub_numsub(a, b) == [(a.encode(), 1), (b.encode(), 1)]
            assert len(_subscribers(sync, db)) == 1
            await client.publish(a, b"one")
            await client.publish(b, b"two")
            got = await asyncio.gather(*(w.get(5) for _, w in watchers))
            assert got == [b"one" if name == a else b"two" for name, _ in watchers]
            # a watcher that does not read loses its oldest messages, never blocks the others
            for n in range(10):
                await client.publish(a, str(n).encode())
            # one connection delivers in order: once b has the marker, a has all ten
            await client.publish(b, b"marker")
            assert await watchers[-1][1].get(5) == b"marker"
            first = watchers[0][1]
            assert first.pending == 4
            assert [await first.get(1) for _ in range(4)] == [b"6", b"7", b"8", b"9"]
            # Redis drops the connection: the reader subscribes again to every channel
            (reader,) = _subscribers(sync, db)
            sync.client_kill_filter(_id=reader["id"])  # this test's connection, no other
            await until_async(
                lambda: sync.pubsub_numsub(a, b) == [(a.encode(), 1), (b.encode(), 1)],
                10,
                "the subscriptions to come back",
            )
            await client.publish(b, b"again")
            assert await watchers[-1][1].get(5) == b"again"
        # the last watcher gone: no subscription and no connection left
        await until_async(lambda: not _subscribers(sync, db), 10, "the connection to close")
        assert fanout.channels == 0
    finally:
        await fanout.close()
        await client.aclose()


@pytest.mark.integration
async def test_job_watches_share_one_subscription(tmp_path: Path) -> None:
    db = 15
    sync = redis.Redis(port=REDIS_PORT, db=db)
    metadata = MetaData()
    table = job_table(metadata, "sharetest")
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    jobs = JobStore(engine, table, redis_url(db))
    try:
        recs = [await jobs.create("compile", "alice", {}) for _ in range(3)]
        firsts: list[int] = []

        async def watch(rec: JobRecord) -> list[str]:
            seen = []
            async for event, _, _ in jobs.watch(rec.id, None, poll_seconds=0.2):
                seen.append(event)
                if event == "queued":
                    firsts.append(1)
            return seen

        tasks = [asyncio.create_task(watch(recs[n % 3])) for n in range(30)]
        await until_async(lambda: len(firsts) == 30, 10, "every watch to start")
        assert len(_subscribers(sync, db)) == 1
        assert sync.pubsub_numsub(*(jobs.channel(r.id) for r in recs)) == [
            (jobs.channel(r.id).encode(), 1) for r in recs
        ]
        for rec in recs:
            await jobs.update(rec.id, "started", state=RUNNING, started_at=now())
            await jobs.update(rec.id, "completed", "done", state=SUCCEEDED, ended_at=now())
        seen = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        assert all(s == ["queued", "started", "completed"] for s in seen), seen
        await until_async(lambda: not _subscribers(sync, db), 10, "the connection to close")
    finally:
        await jobs.redis.aclose()
        await engine.dispose()


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with pg_stack(
        tmp_path_factory.mktemp("tracker-watches"),
        REDIS_DB,
        "tracker",
        env={"NEURAL_MAX_WATCHES_PER_PRINCIPAL": "3"},
        keys={who: (who, "user") for who in ("alice", "bob")},
    ) as s:
        yield s


def _md(stack: Stack, who: str) -> tuple[tuple[str, str], ...]:
    return stack.meta(who)


def _run(t: tracker_pb2_grpc.TrackerServiceStub, md: tuple) -> str:
    exp = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="watched")),
        metadata=md,
    )
    run = t.CreateRun(
        tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name="r")),
        metadata=md,
    )
    return run.id


@pytest.mark.e2e
def test_one_users_watches_are_capped_and_do_not_starve_another(stack: Stack) -> None:
    t = tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(stack.address))
    alice, bob = _md(stack, "alice"), _md(stack, "bob")
    alice_run, bob_run = _run(t, alice), _run(t, bob)
    request = tracker_pb2.WatchRunRequest(run_id=alice_run)
    streams = [t.WatchRun(request, metadata=alice, timeout=60) for _ in range(3)]
    for stream in streams:
        assert next(stream).type == "status"  # held open by the server now
    extra = t.WatchRun(request, metadata=alice, timeout=60)
    with pytest.raises(grpc.RpcError) as info:
        next(extra)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "NEURAL_MAX_WATCHES_PER_PRINCIPAL" in (info.value.details() or "")

    events: list[tracker_pb2.RunEvent] = []
    ready = threading.Event()
    bobs = t.WatchRun(tracker_pb2.WatchRunRequest(run_id=bob_run), metadata=bob, timeout=60)

    def watch() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end of the test
            for event in bobs:
                events.append(event)
                ready.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    t.LogMetrics(
        tracker_pb2.LogMetricsRequest(
            run_id=bob_run, metrics=[tracker_pb2.Metric(key="loss", value=0.25, step=1)]
        ),
        metadata=bob,
    )
    until(lambda: any(e.type == "metrics" for e in events), 10, "bob's metrics event")
    # four watchers, two runs: one subscriber connection, each channel subscribed once
    sync = redis.Redis(port=REDIS_PORT, db=REDIS_DB)
    assert sync.pubsub_numsub(channel(alice_run), channel(bob_run)) == [
        (channel(alice_run).encode(), 1),
        (channel(bob_run).encode(), 1),
    ]
    assert len(_subscribers(sync, REDIS_DB)) == 1
    # a stream that ends gives its slot back
    streams[0].cancel()
    until(lambda: _watch_opens(t, request, alice), 10, "alice's slot to come back")
    for stream in [*streams, bobs]:
        stream.cancel()
    thread.join(10)


def _watch_opens(t: tracker_pb2_grpc.TrackerServiceStub, request: object, md: tuple) -> bool:
    stream = t.WatchRun(request, metadata=md, timeout=60)
    try:
        return next(stream).type == "status"
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    finally:
        stream.cancel()
