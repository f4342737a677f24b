"""Rollout jobs through the kit's lifecycle, as the controller moves them (rollouts.py), on
PostgreSQL and SQLite: queued until the canary's replicas start, running, then succeeded when
they serve its share, failed with the loader's reason, or cancelled by a rollback; a job that
has ended is skipped, by this controller or a new one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from service_kit import db
from service_kit.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobStore

from services.deployer import app, tables
from services.deployer.controller.rollouts import RolloutJobs
from services.deployer.store import V_SERVING, DeployerStore, Deployment, new_id
from tests.deployer.test_deployer_store import columns
from tests.services.conftest import REDIS_PORT, db_url  # noqa: F401 (the fixture)


@pytest.fixture
async def stores(db_url: str) -> AsyncIterator[tuple[DeployerStore, JobStore]]:  # noqa: F811
    engine = db.make_engine(db_url)
    await db.migrate(engine, app.MIGRATIONS, app.VERSION_TABLE)
    jobs = JobStore(engine, tables.jobs, f"redis://127.0.0.1:{REDIS_PORT}/13")
    try:
        yield DeployerStore(engine), jobs
    finally:
        await engine.dispose()


def version(name: str, traffic: int, job_id: str = "") -> dict:
    return {
        "id": new_id(),
        "version": name,
        "model_path": f"/models/{name}.onnx",
        "traffic_percent": traffic,
        "rollout_job_id": job_id,
    }


async def canary(store: DeployerStore, jobs: JobStore, name: str) -> tuple[Deployment, str]:
    """A deployment serving v1, with v2 rolled out to 30 % by a queued job."""
    d = await store.create(columns(name), version("v1", 100))
    await store.set_version(d.versions[0].id, V_SERVING)
    job = await jobs.create("rollout", "alice", {"deployment_id": d.id, "webhooks": []})
    d = await store.rollout(await store.get(d.id, None), version("v2", 30, job.id))
    return d, job.id


async def step(store: DeployerStore, driver: RolloutJobs, running: int, ready: int) -> None:
    await driver.drive(
        await store.active(),
        await store.open_rollouts(),
        running=lambda v: running if v.version == "v2" else 1,
        ready=lambda v: ready if v.version == "v2" else 1,
        wanted=lambda d, v: 1,
    )


async def test_a_rollout_job_runs_then_succeeds_and_is_then_skipped(
    stores: tuple[DeployerStore, JobStore],
) -> None:
    store, jobs = stores
    d, job_id = await canary(store, jobs, "steady")
    driver = RolloutJobs(jobs)
    await step(store, driver, running=0, ready=0)
    assert (await jobs.get(job_id)).state == QUEUED  # no replica of the canary yet
    await step(store, driver, running=1, ready=0)
    rec = await jobs.get(job_id)
    assert (rec.state, rec.attempts) == (RUNNING, 1)
    assert rec.details == {
        "deployment": "steady",
        "deployment_id": d.id,
        "version": "v2",
        "traffic_percent": 30,
    }
    await step(store, driver, running=1, ready=1)
    assert (await jobs.get(job_id)).state == RUNNING  # ready, but not yet SERVING
    v2 = next(v for v in (await store.get(d.id, None)).versions if v.version == "v2")
    await store.set_version(v2.id, V_SERVING)
    await step(store, driver, running=1, ready=1)
    done = await jobs.get(job_id)
    assert (done.state, done.result, done.progress) == (
        SUCCEEDED,
        "v2 serves 30% of steady's predictions",
        1.0,
    )
    assert await store.open_rollouts() == {}
    # a new controller handed the ended job anyway (a stale read) leaves it as it is
    await RolloutJobs(jobs).drive(
        await store.active(),
        {v2.id: job_id},
        running=lambda v: 1,
        ready=lambda v: 1,
        wanted=lambda d, v: 1,
    )
    assert await jobs.get(job_id) == done


async def test_a_canary_that_cannot_load_fails_its_job_with_the_reason(
    stores: tuple[DeployerStore, JobStore],
) -> None:
    store, jobs = stores
    d, job_id = await canary(store, jobs, "spoiled")
    driver = RolloutJobs(jobs)
    await step(store, driver, running=1, ready=0)
    v2 = next(v for v in d.versions if v.version == "v2")
    await store.fail_version(v2.id, "the model cannot be served: INVALID_PROTOBUF")
    await step(store, driver, running=0, ready=0)
    rec = await jobs.get(job_id)
    assert (rec.state, rec.error) == (FAILED, "the model cannot be served: INVALID_PROTOBUF")
    assert [(v.version, v.traffic_percent) for v in (await store.get(d.id, None)).versions] == [
        ("v2", 0),
        ("v1", 100),
    ]


async def test_a_rollback_cancels_a_running_rollout_job(
    stores: tuple[DeployerStore, JobStore],
) -> None:
    store, jobs = stores
    d, job_id = await canary(store, jobs, "reverted")
    driver = RolloutJobs(jobs)
    await step(store, driver, running=1, ready=0)
    await store.promote(d.id, None, back=True)
    await step(store, driver, running=1, ready=0)
    rec = await jobs.get(job_id)
    assert (rec.state, rec.attempts) == (CANCELLED, 1)
    assert await store.open_rollouts() == {}
