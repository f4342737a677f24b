"""The service kit's job lifecycle and job events, against real PostgreSQL, SQLite and Redis:
a job starts, resumes, ends once with a reason, gives up after its attempts; a watcher sees
each event with the job as it was then, and every event has a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import pytest
from service_kit import db, lifecycle
from service_kit.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    JobStore,
    job_table,
)
from service_kit.lifecycle import Lifecycle
from sqlalchemy import MetaData

from tests.services.conftest import REDIS_URL
from tests.waiting import until_async

pytestmark = pytest.mark.integration


class Heard:
    """A JobEvents that records what it hears (as the webhook sender would queue it)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def job_event(self, sessions: Any, rec: JobRecord, event: str, message: str = "") -> None:
        self.events.append((rec.id, event, message))

    async def deliveries(
        self, sessions: Any, job_ids: Iterable[str], per_job: int = 50
    ) -> Mapping[str, Sequence[Any]]:
        return {}

    def of(self, job_id: str, event: str) -> list[str]:
        return [m for j, e, m in self.events if j == job_id and e == event]


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[tuple[JobStore, Heard]]:
    metadata = MetaData()
    table = job_table(metadata, "lctest")
    engine = db.make_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    heard = Heard()
    jobs = JobStore(engine, table, REDIS_URL, heard)
    try:
        yield jobs, heard
    finally:
        await jobs.redis.aclose()
        await engine.dispose()


async def test_a_start_counts_an_attempt_and_a_resume_keeps_the_first_start_time(
    store: tuple[JobStore, Heard],
) -> None:
    jobs, heard = store
    rec = await jobs.create("compile", "alice", {})
    first = await Lifecycle(jobs, rec.id, 4).start()
    assert first is not None and first.state == RUNNING and first.attempts == 1
    again = await Lifecycle(jobs, rec.id, 4).start()  # a redelivery after a killed worker
    assert again is not None and again.attempts == 2 and again.started_at == first.started_at
    assert heard.of(rec.id, "started") == ["started", "resumed (attempt 2)"]


async def test_a_finished_job_is_skipped_and_ends_only_once(store: tuple[JobStore, Heard]) -> None:
    jobs, heard = store
    rec = await jobs.create("compile", "alice", {})
    life = Lifecycle(jobs, rec.id, 4)
    await life.start()
    assert await life.succeed("models/m1", progress=1.0)
    assert not await life.fail("too late")  # a racing end loses, and says nothing
    assert not await life.cancel()
    assert await life.start() is None  # the redelivery of a finished job
    done = await jobs.get(rec.id)
    assert (done.state, done.result, done.error, done.attempts) == (SUCCEEDED, "models/m1", "", 1)
    assert [e for j, e, _ in heard.events if j == rec.id] == ["started", "completed"]
    assert heard.of(rec.id, "completed") == ["models/m1"]


async def test_cancel_is_honoured_queued_and_running(store: tuple[JobStore, Heard]) -> None:
    jobs, heard = store
    queued = await jobs.create("compile", "alice", {})
    await jobs.cancel(queued.id, None)
    assert await Lifecycle(jobs, queued.id, 4).start() is None
    assert (await jobs.get(queued.id)).state == CANCELLED
    running = await jobs.create("compile", "alice", {})
    life = Lifecycle(jobs, running.id, 4)
    await life.start()
    await jobs.cancel(running.id, None)
    assert await life.cancel_requested()
    assert await life.cancel()
    assert (await jobs.get(running.id)).state == CANCELLED
    assert heard.of(running.id, "cancelled") == ["cancelled"]


async def test_a_job_whose_worker_died_each_attempt_fails_with_the_reason_once(
    store: tuple[JobStore, Heard],
) -> None:
    jobs, heard = store
    rec = await jobs.create("compile", "alice", {})
    for _ in range(4):  # four starts, each killed before it could end the job
        assert await Lifecycle(jobs, rec.id, 4).start() is not None
    assert await Lifecycle(jobs, rec.id, 4).start() is None  # the fifth delivery
    assert await Lifecycle(jobs, rec.id, 4).start() is None  # and any after it
    done = await jobs.get(rec.id)
    assert done.state == FAILED and done.attempts == 4
    assert done.error.startswith("gave up after 4 attempts: the worker stopped during each")
    assert heard.of(rec.id, "failed") == [done.error]


async def test_retries_running_out_fail_the_job_once_with_the_last_error(
    store: tuple[JobStore, Heard],
) -> None:
    jobs, heard = store
    rec = await jobs.create("training", "alice", {})
    await Lifecycle(jobs, rec.id, 4).start()
    # what Dramatiq's Retries middleware sends the on_retry_exhausted actor
    message = {
        "args": [rec.id],
        "options": {"traceback": "Traceback...\nConnectionError: tracker unreachable\n"},
    }
    assert await lifecycle.give_up(jobs, message, {"retries": 3, "max_retries": 3})
    assert not await lifecycle.give_up(jobs, message, {"retries": 3, "max_retries": 3})
    done = await jobs.get(rec.id)
    assert done.state == FAILED
    assert done.error == "gave up after 4 attempts: ConnectionError: tracker unreachable"
    assert len(heard.of(rec.id, "failed")) == 1


async def test_a_watcher_gets_each_event_with_the_job_as_it_was_and_a_message(
    store: tuple[JobStore, Heard],
) -> None:
    jobs, _ = store
    rec = await jobs.create("training", "alice", {})
    events: list[tuple[str, str, JobRecord]] = []

    async def watch() -> None:
        async for event in jobs.watch(rec.id, None, poll_seconds=0.2):
            events.append(event)

    task = asyncio.create_task(watch())
    await until_async(lambda: events, 10, "the watch's first event")
    life = Lifecycle(jobs, rec.id, 4)
    await life.start()
    # two epochs end before the watcher reads the row: each event keeps its own epoch
    for epoch in (1, 2):
        await jobs.update(
            rec.id,
            "progress",
            f"epoch {epoch}/3",
            progress=epoch / 3,
            details={"epoch": epoch, "metrics": {"loss": 1.0 / epoch}},
        )
    await jobs.save(rec.id, progress=0.9)  # within an epoch: no event
    await life.succeed("runs/r1", progress=1.0)
    await asyncio.wait_for(task, 10)
    assert [(e, m) for e, m, _ in events] == [
        ("queued", "queued"),
        ("started", "started"),
        ("progress", "epoch 1/3"),
        ("progress", "epoch 2/3"),
        ("completed", "runs/r1"),
    ]
    assert [r.details.get("epoch") for e, _, r in events if e == "progress"] == [1, 2]
    assert events[2][2].details["metrics"] == {"loss": 1.0}
    assert events[0][2].state == QUEUED and events[-1][2].state == SUCCEEDED
