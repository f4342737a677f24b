"""WatchRun under load, end to end: two tracker server processes on one database and a Redis
of this module's own (stopped and started again in the last test), watched and written over
gRPC. Hundreds of watchers across users and processes get every metric event; a publish that
fails is counted; a watcher that falls behind is closed with
RESOURCE_EXHAUSTED while a fast one on the same run gets everything; a watcher whose
subscription was lost (Redis away, its connection killed) is told to watch again (UNAVAILABLE),
never left to miss events in silence."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from neural.v1 import tracker_pb2, tracker_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from service_kit import db
from service_kit.fanout import Fanout, FellBehind, Interrupted, Watcher
from service_kit.redis_clients import async_client

from services.tracker.app import MIGRATIONS, VERSION_TABLE, warm
from services.tracker.artifacts import LocalArtifactStore
from services.tracker.service import TrackerService
from services.tracker.store import TrackerStore
from tests import tokens
from tests.services.conftest import create_pg_database, drop_pg_database, redis_url
from tests.services.local_redis import LocalRedis
from tests.services.stack import Stack, make_stack
from tests.waiting import until_async

# The Watcher alone, then the Fanout on the real Redis, then two tracker servers.


async def test_a_watcher_that_falls_behind_is_closed_or_loses_its_oldest() -> None:
    closed = REGISTRY.get_sample_value("neural_watch_overflows_total", {"action": "closed"}) or 0
    watcher = Watcher(3, close_slow=True)
    for n in range(3):
        watcher.deliver(str(n).encode())
    assert await watcher.get(1) == b"0"  # within its queue: nothing lost
    for n in range(3, 5):
        watcher.deliver(str(n).encode())  # the second one does not fit
    with pytest.raises(FellBehind, match="fell behind by more than 3"):
        await watcher.get(1)
    with pytest.raises(FellBehind):  # for good
        await watcher.get(1)
    assert watcher.pending <= 1  # what it held is freed
    assert REGISTRY.get_sample_value("neural_watch_overflows_total", {"action": "closed"}) == (
        closed + 1
    )
    # a job's watcher: the newest count, it drops the oldest and goes on
    keeps = Watcher(2)
    for n in range(4):
        keeps.deliver(str(n).encode())
    assert [await keeps.get(1), await keeps.get(1)] == [b"2", b"3"]


async def test_a_waiting_watcher_learns_at_once_that_it_was_closed() -> None:
    watcher = Watcher(1, close_slow=True)
    waiting = asyncio.create_task(watcher.get(30))
    await asyncio.sleep(0)  # it waits for a message
    watcher.deliver(b"a")
    assert await waiting == b"a"
    watcher.deliver(b"b")
    waiting = asyncio.create_task(watcher.get(30))
    assert await waiting == b"b"
    waiting = asyncio.create_task(watcher.get(30))
    await asyncio.sleep(0)
    watcher.deliver(b"c")
    watcher.deliver(b"d")  # full (nobody read c yet): closed, and the waiting get raises
    with pytest.raises(FellBehind):
        await asyncio.wait_for(waiting, 5)


@pytest.mark.integration
async def test_a_watch_starts_subscribed_and_a_slow_watcher_does_not_slow_a_fast_one() -> None:
    client = aioredis.from_url(redis_url(13))
    fanout = Fanout(client, queue_size=4, close_slow=True)
    name = f"watchers-{uuid.uuid4().hex}"
    try:
        async with fanout.watch(name) as slow, fanout.watch(name) as fast:
            # no wait: Redis confirmed the subscription before watch() returned
            assert await client.publish(name, b"first") == 1
            assert await fast.get(5) == b"first"
            for n in range(10):  # the fast one reads each as it comes, the slow one none
                await client.publish(name, str(n).encode())
                assert await fast.get(5) == str(n).encode()
            with pytest.raises(FellBehind):
                await slow.get(1)
    finally:
        await fanout.close()
        await client.aclose()


@pytest.mark.integration
async def test_a_lost_subscription_interrupts_the_watchers_that_must_not_miss_a_message(
    tmp_path: Path,
) -> None:
    """Redis drops the subscription's connection (CLIENT KILL: what an output buffer over its
    limit or a network fault does) while Redis itself stays up: redis-py connects again and
    resubscribes on its own, and what was published in between is gone. A run's watcher is
    told (Interrupted); a job's watcher goes on; a watch made afterwards gets every message."""
    cache = LocalRedis(tmp_path)
    cache.start()
    client = async_client(cache.url)
    strict, lenient = Fanout(client, close_slow=True), Fanout(client)
    interruptions = REGISTRY.get_sample_value("neural_watch_interruptions_total") or 0
    try:
        async with strict.watch("c") as run_watch, lenient.watch("c") as job_watch:
            assert await client.publish("c", b"1") == 2
            assert await run_watch.get(5) == b"1"
            assert await job_watch.get(5) == b"1"
            assert await client.client_kill_filter(_type="pubsub") == 2

            # both readers connect and subscribe again on their own
            deadline = asyncio.get_running_loop().time() + 10
            while await client.pubsub_numsub("c") != [(b"c", 2)]:
                assert asyncio.get_running_loop().time() < deadline, "subscriptions not back"
                await asyncio.sleep(0.01)
            await client.publish("c", b"2")
            with pytest.raises(Interrupted):
                await run_watch.get(5)
            with pytest.raises(Interrupted):  # for good
                await run_watch.get(0.1)
            assert await job_watch.get(5) == b"2"
            assert (REGISTRY.get_sample_value("neural_watch_interruptions_total") or 0) >= (
                interruptions + 2
            )
            async with strict.watch("c") as again:
                await client.publish("c", b"3")
                assert await again.get(5) == b"3"
    finally:
        await strict.close()
        await lenient.close()
        await client.aclose()
        cache.stop()


@pytest.mark.integration
async def test_the_warm_up_leaves_the_watches_it_runs_beside_alone(tmp_path: Path) -> None:
    """The warm-up runs while the tracker already serves: dropping its Redis connections closed
    the watches' subscription under them (redis-py made it again; what was published meanwhile
    was lost, and a watch opened meanwhile failed INTERNAL). It closes only idle ones now."""
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'neural.db'}")
    await db.migrate(engine, MIGRATIONS, VERSION_TABLE)
    store = TrackerStore(engine)
    service = TrackerService(store, LocalArtifactStore(tmp_path, 1 << 20), redis_url(13))
    name = f"warm-up-{uuid.uuid4().hex}"
    interruptions = REGISTRY.get_sample_value("neural_watch_interruptions_total") or 0
    try:
        async with service.fanout.watch(name) as watcher:
            await warm(engine, store, service)
            await service.redis.publish(name, b"after the warm-up")
            assert await watcher.get(5) == b"after the warm-up"
        assert REGISTRY.get_sample_value("neural_watch_interruptions_total") == interruptions
    finally:
        await service.fanout.close()
        await store.close()


Key = tuple[str, int]  # a metric point as a watcher counts it: (key, step)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack, LocalRedis]]:
    """Two tracker processes (A and B) on one database and one Redis."""
    tmp = tmp_path_factory.mktemp("tracker-watchers")
    cache = LocalRedis(tmp)
    cache.start()
    name, url = asyncio.run(create_pg_database())
    stacks: list[Stack] = []
    try:
        for label in ("a", "b"):  # one after the other: each migrates at start
            (tmp / label).mkdir()
            s = make_stack(tmp / label, url, 0, "tracker")
            s.env.update(NEURAL_REDIS_URL=cache.url, NEURAL_TRACKER_PROCESSES="1")
            stacks.append(s)
            s.start_server("services.tracker")
            s.wait_serving()
        yield stacks[0], stacks[1], cache
    finally:
        for s in stacks:
            s.stop_all()
        cache.stop()
        asyncio.run(drop_pg_database(name))


def metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of `name`'s samples with `labels` on `stack`'s metrics endpoint."""
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def md(user: str) -> tuple[tuple[str, str], ...]:
    return tokens.as_(user, "user")


async def new_runs(t: tracker_pb2_grpc.TrackerServiceStub, user: str, count: int) -> list[str]:
    exp = await t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="watched")),
        metadata=md(user),
    )
    runs = []
    for n in range(count):
        run = await t.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name=f"r{n}")),
            metadata=md(user),
        )
        runs.append(run.id)
    return runs


async def log(
    t: tracker_pb2_grpc.TrackerServiceStub,
    user: str,
    run_id: str,
    steps: range,
    keys: tuple[str, ...] = ("loss", "acc"),
) -> set[Key]:
    """Logs `keys` at `steps` in one call; the points logged."""
    metrics = [tracker_pb2.Metric(key=k, value=0.5, step=s) for s in steps for k in keys]
    await t.LogMetrics(
        tracker_pb2.LogMetricsRequest(run_id=run_id, metrics=metrics), metadata=md(user)
    )
    return {(m.key, m.step) for m in metrics}


class Watch:
    """One WatchRun stream run as a careful client (the console) runs it: its metric points
    counted as they come; told that its events were interrupted (UNAVAILABLE: watch again), it
    watches again and reads the history for what it missed, each point counted once."""

    def __init__(
        self, t: tracker_pb2_grpc.TrackerServiceStub, user: str, run_id: str, recover: bool
    ) -> None:
        self.t, self.user, self.run_id, self.recover = t, user, run_id, recover
        self.call: grpc.aio.UnaryStreamCall | None = None
        self.seen: Counter[Key] = Counter()
        self.recovered: set[Key] = set()  # read from the history: not counted again as events
        self.interruptions: list[str] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        t: tracker_pb2_grpc.TrackerServiceStub,
        user: str,
        run_id: str,
        read: bool = True,
        recover: bool = True,
    ) -> Watch:
        """Returns once the stream's first response came: the subscription is in place."""
        watch = cls(t, user, run_id, recover)
        await watch._start()
        if read:
            watch.task = asyncio.create_task(watch._read())
        return watch

    async def _start(self) -> None:
        self.call = self.t.WatchRun(
            tracker_pb2.WatchRunRequest(run_id=self.run_id), metadata=md(self.user)
        )
        first = await self.call.read()
        assert first.type == "status"

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                assert self.call is not None
                try:
                    while (event := await self.call.read()) is not grpc.aio.EOF:
                        self._count(event.metrics)
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or not self.recover:
                        self.error = exc
                        return
                    self.interruptions.append(exc.details() or "")
                    await self._start()
                    await self.catch_up()

    def _count(self, metrics: Iterable[tracker_pb2.Metric]) -> None:
        self.seen.update((m.key, m.step) for m in metrics if (m.key, m.step) not in self.recovered)

    async def catch_up(self, keys: tuple[str, ...] = ("loss", "acc")) -> None:
        """The points of the run's history this watch has not seen."""
        for key in keys:
            token = ""
            while True:
                page = await self.t.GetMetricHistory(
                    tracker_pb2.GetMetricHistoryRequest(
                        run_id=self.run_id, key=key, page_size=10_000, page_token=token
                    ),
                    metadata=md(self.user),
                )
                for m in page.metrics:
                    if (m.key, m.step) not in self.seen:
                        self.seen[(m.key, m.step)] += 1
                        self.recovered.add((m.key, m.step))
                token = page.next_page_token
                if not token:
                    break

    def close(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()


def stub(stack: Stack, options: list[tuple[str, int]] | None = None) -> tuple:
    channel = grpc.aio.insecure_channel(stack.address, options=options)
    return channel, tracker_pb2_grpc.TrackerServiceStub(channel)


@pytest.mark.e2e
async def test_300_watchers_across_users_and_processes_get_every_event(
    servers: tuple[Stack, Stack, LocalRedis],
) -> None:
    a, b, _ = servers
    users = [f"watcher-{n}" for n in range(15)]  # 20 watches each: the default cap
    channels = [stub(s) for s in (a, b) for _ in range(3)]
    stubs = [t for _, t in channels]
    opened: list[Watch] = []
    try:
        runs = {u: await new_runs(stubs[0], u, 2) for u in users}
        opened = await asyncio.gather(
            *(
                Watch.open(stubs[n % len(stubs)], u, runs[u][n % 2])
                for u in users
                for n in range(20)  # each run watched 10 times, from both processes
            )
        )
        owners = [(u, runs[u][n % 2]) for u in users for n in range(20)]
        assert len(opened) == 300
        lonely = (await new_runs(stubs[0], "nobody-watches", 1))[0]
        unwatched = metric(a, "tracker_events_unwatched_total")

        # Several writers at once, each run written through both processes in turn.
        logged: dict[str, set[Key]] = {}

        async def write(user: str, run_id: str) -> None:
            points: set[Key] = set()
            for call in range(12):
                t = stubs[call % len(stubs)]
                points |= await log(t, user, run_id, range(call * 3, call * 3 + 3))
            logged[run_id] = points

        await asyncio.gather(
            *(write(u, r) for u in users for r in runs[u]), write("nobody-watches", lonely)
        )
        expected = {run: Counter(dict.fromkeys(points, 1)) for run, points in logged.items()}

        def done() -> bool:
            return all(w.seen == expected[run] for w, (_, run) in zip(opened, owners, strict=True))

        with contextlib.suppress(AssertionError):
            await until_async(done, 30, "every watcher to get every point")
        # each (key, step) exactly once: a point over is a count of 2, a point missing 0
        wrong = [
            (n, sorted(expected[run] - w.seen)[:5], sorted(w.seen - expected[run])[:5])
            for n, (w, (_, run)) in enumerate(zip(opened, owners, strict=True))
            if w.seen != expected[run]
        ]
        # what the servers said of Redis and pub/sub, to tell a lost subscription from a
        # lost publish should this ever fail again (it did once, on a loaded machine)
        said = [
            line[-300:]
            for s in (a, b)
            for line in (s.logs / "server.log").read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line or "pub/sub" in line
        ]
        told = [w.interruptions for w in opened if w.interruptions]
        failed = [w.error.details() for w in opened if w.error is not None]
        assert not wrong, (
            f"{len(wrong)} watchers (index, missing, extra): {wrong[:5]}; "
            f"{len(told)} watched again after an interruption, {len(failed)} failed "
            f"({failed[:2]}); servers said: {said[-20:]}"
        )
        # the run nobody watched: its events were never encoded, never sent
        assert metric(a, "tracker_events_unwatched_total") > unwatched
    finally:
        for w in opened:
            w.close()
        for channel, _ in channels:
            await channel.close()


@pytest.mark.e2e
async def test_a_slow_watcher_is_closed_and_a_fast_one_gets_everything(
    servers: tuple[Stack, Stack, LocalRedis],
) -> None:
    a, _, _ = servers
    channel, t = stub(a)
    # A client that takes almost nothing before its application reads: the server's writes
    # block at once, and its queue in the Fanout fills.
    slow_channel, slow_t = stub(
        a, [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    )
    user = "slow-and-fast"
    fast = slow = None
    try:
        (run_id,) = await new_runs(t, user, 1)
        fast = await Watch.open(t, user, run_id)
        slow = await Watch.open(slow_t, user, run_id, read=False)
        closed = metric(a, "neural_watch_overflows_total", action="closed")
        logged: set[Key] = set()
        step = 0
        # One message per flush (10 ms): log until the slow watcher's queue (256) overflowed.
        # A point a call: the calls of one flush stay well under the 100 points a message
        # keeps, so the fast watcher has every one.
        while metric(a, "neural_watch_overflows_total", action="closed") == closed:
            for _ in range(50):
                logged |= await log(t, user, run_id, range(step, step + 1), ("loss",))
                step += 1
            assert step < 50_000, "the slow watcher was never closed"
        logged |= await log(t, user, run_id, range(step, step + 1), ("loss",))  # after it
        expected = Counter(dict.fromkeys(logged, 1))
        await until_async(lambda: fast.seen == expected, 20, "the fast watcher to get all")

        with pytest.raises(grpc.RpcError) as info:
            while await slow.call.read() is not grpc.aio.EOF:  # what the transport held
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = info.value.details() or ""
        assert "fell behind" in details and "GetMetricHistory" in details, details
        assert fast.seen == expected
    finally:
        for w in (fast, slow):
            if w is not None:
                w.close()
        await channel.close()
        await slow_channel.close()


@pytest.mark.e2e
async def test_watchers_whose_subscription_is_killed_are_told_and_miss_nothing(
    servers: tuple[Stack, Stack, LocalRedis],
) -> None:
    """Redis stays up but drops the tracker processes' subscriptions while writers log through
    both: redis-py reconnects on its own, and what was published in between never reaches
    those processes. Every watcher is told to watch again, and watching again and reading the
    history leaves none with a point missing or counted twice."""
    a, b, cache = servers
    channels = [stub(s) for s in (a, b)]
    stubs = [t for _, t in channels]
    user = "killed-subscriptions"
    watches: list[Watch] = []
    admin = aioredis.from_url(cache.url)
    try:
        runs = await new_runs(stubs[0], user, 2)
        watches = [await Watch.open(stubs[n % 2], user, runs[n % 4 // 2]) for n in range(8)]
        logged: dict[str, set[Key]] = {run: set() for run in runs}
        for call in range(10):
            if call == 5:
                assert await admin.client_kill_filter(_type="pubsub") == 2  # A's and B's
            for n, run in enumerate(runs):
                logged[run] |= await log(stubs[(call + n) % 2], user, run, range(call, call + 1))

        def complete() -> bool:
            return all(set(w.seen) == logged[w.run_id] for w in watches)

        await until_async(complete, 30, "every watcher to have every point")
        assert all(set(w.seen.values()) == {1} for w in watches)
        assert all(w.interruptions for w in watches), [w.interruptions for w in watches]
        assert "watch again" in watches[0].interruptions[0]
    finally:
        for w in watches:
            w.close()
        for channel, _ in channels:
            await channel.close()
        await admin.aclose()


@pytest.mark.e2e
async def test_a_watch_is_told_when_redis_goes_away_and_watching_again_misses_nothing(
    servers: tuple[Stack, Stack, LocalRedis],
) -> None:
    a, b, cache = servers
    channel_a, ta = stub(a)
    channel_b, tb = stub(b)
    user = "outage"
    watch = again = None
    try:
        (run_id,) = await new_runs(ta, user, 1)
        # in the other process than the writer; it reports what it is told, no recovering
        watch = await Watch.open(tb, user, run_id, recover=False)
        before = await log(ta, user, run_id, range(0, 3))
        await until_async(lambda: set(watch.seen) == before, 10, "the first points")
        failures = metric(a, "tracker_event_publish_failures_total")
        interruptions = metric(b, "neural_watch_interruptions_total")

        cache.stop()
        during = await log(ta, user, run_id, range(3, 6))  # stored; its event not sent
        await until_async(
            lambda: metric(a, "tracker_event_publish_failures_total") > failures,
            10,
            "a failed publish to be counted",
        )
        assert "run events not published" in a.log("server")
        # the watch cannot know what it misses: it ends, saying so and what to do
        await until_async(lambda: watch.error is not None, 20, "the watch to be told")
        assert watch.error is not None
        assert watch.error.code() == grpc.StatusCode.UNAVAILABLE, watch.error
        assert "watch again" in (watch.error.details() or ""), watch.error.details()
        assert metric(b, "neural_watch_interruptions_total") > interruptions
        cache.start()  # on the same port

        # a client that watches again (once the tracker reaches Redis) and reads the history
        deadline = asyncio.get_running_loop().time() + 20
        while again is None:
            try:
                again = await Watch.open(tb, user, run_id)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                assert asyncio.get_running_loop().time() < deadline, exc
                await asyncio.sleep(0.1)
        await again.catch_up()
        assert set(again.seen) >= before | during
        after = await log(ta, user, run_id, range(6, 9))
        await until_async(
            lambda: again is not None and set(again.seen) == before | during | after,
            10,
            "events after the outage",
        )
        # events kept while Redis was away may come too: each point is still counted once
        assert set(again.seen.values()) == {1}
    finally:
        for w in (watch, again):
            if w is not None:
                w.close()
        await channel_a.close()
        await channel_b.close()
