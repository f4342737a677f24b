"""The start-up warm-up (ServiceSpec.warmup, service_kit.warmup): it runs once health has
reported, SERVING never waits for it, its errors are logged and the server keeps serving, and
the services' warm-ups leave no row behind (their writes are rehearsed and rolled back)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_kit import db
from service_kit.errors import NotFound
from service_kit.jobs import JobStore
from service_kit.server import ServiceSpec, serve
from service_kit.settings import Settings, load
from service_kit.warmup import NOBODY, rehearsal
from sqlalchemy import MetaData, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.authz.keys import generate
from services.compiler import tables as compiler_tables
from services.compiler.app import MIGRATIONS, VERSION_TABLE
from tests.services.conftest import REDIS_URL
from tests.waiting import until_async

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def kit_settings(tmp: Path) -> Settings:
    return Settings(
        service="kit",
        host="127.0.0.1",
        port=0,  # any free port: serve() reports it
        metrics_port=0,
        database_url=f"sqlite+aiosqlite:///{tmp / 'neural.db'}",
        redis_url=REDIS_URL,
        storage_dir=tmp,
        page_token_secret="",
        grace_seconds=0,
    )


@asynccontextmanager
async def running(spec: ServiceSpec, tmp: Path) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    """`serve(spec)` in this event loop, and a health stub on it; stopped by SIGTERM, as a
    container's server is."""
    ports: list[int] = []
    server = asyncio.create_task(serve(spec, kit_settings(tmp), ports.append))
    try:
        await until_async(lambda: ports or server.done(), what="the server to listen")
        assert not server.done(), server
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        if not server.done():
            os.kill(os.getpid(), signal.SIGTERM)  # serve()'s own handler: a graceful stop
        await server


async def status(stub: health_pb2_grpc.HealthStub) -> int:
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status


def logged(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "neural.server" and r.msg == message]


@pytest.mark.unit
async def test_serving_does_not_wait_for_the_warm_up_which_runs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="neural.server")
    started, release = asyncio.Event(), asyncio.Event()
    runs = []

    async def warmup() -> None:
        runs.append(1)
        started.set()
        await release.wait()

    async with running(ServiceSpec("kit", [], warmup=warmup), tmp_path) as health:
        await until_async(started.is_set, what="the warm-up to start")
        # the warm-up is still held, and the server is already serving
        assert await status(health) == SERVING
        assert not logged(caplog, "warm-up done")
        release.set()
        await until_async(lambda: logged(caplog, "warm-up done"), what="the warm-up's end")
        assert await status(health) == SERVING
    (done,) = logged(caplog, "warm-up done")
    assert done.fields["seconds"] >= 0  # type: ignore[attr-defined]
    assert runs == [1]


@pytest.mark.unit
async def test_the_warm_up_waits_until_the_dependencies_answer(tmp_path: Path) -> None:
    up, started = asyncio.Event(), asyncio.Event()

    async def dependency() -> bool:
        return up.is_set()

    async def warmup() -> None:
        started.set()

    spec = ServiceSpec("kit", [], health_checks=[dependency], warmup=warmup)
    async with running(spec, tmp_path) as health:
        while await status(health) != NOT_SERVING:  # the watcher's first report
            await asyncio.sleep(0.01)
        assert not started.is_set()  # what it would read is not there yet
        up.set()
        await until_async(started.is_set, what="the warm-up, once SERVING")
        assert await status(health) == SERVING


@pytest.mark.unit
async def test_a_failed_warm_up_is_logged_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="neural.server")

    async def warmup() -> None:
        raise RuntimeError("no such module")

    async with running(ServiceSpec("kit", [], warmup=warmup), tmp_path) as health:
        await until_async(lambda: logged(caplog, "warm-up failed"), what="the failure's log")
        assert await status(health) == SERVING
    (failed,) = logged(caplog, "warm-up failed")
    assert failed.exc_info is not None and "no such module" in str(failed.exc_info[1])
    assert not logged(caplog, "warm-up done")


@pytest.mark.unit
async def test_a_warm_up_still_running_at_stop_does_not_hold_the_stop(tmp_path: Path) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def warmup() -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never ends by itself
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with running(ServiceSpec("kit", [], warmup=warmup), tmp_path):
        await until_async(started.is_set, what="the warm-up to start")
    # leaving `running` stopped the server: serve() has returned, the warm-up cancelled
    assert cancelled.is_set()


@pytest.mark.integration
async def test_a_rehearsal_runs_a_stores_writes_and_keeps_none(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        await db.prepare(engine, MIGRATIONS, VERSION_TABLE, True)
        jobs = JobStore(engine, compiler_tables.jobs, REDIS_URL)
        kept = await jobs.create("compile", "someone", {})
        async with rehearsal(engine) as sessions:
            rehearsed = JobStore(engine, compiler_tables.jobs, REDIS_URL)
            rehearsed.sessions = sessions
            rec = await rehearsed.create("compile", NOBODY, {})
            assert (await rehearsed.get(rec.id)).owner == NOBODY  # written, inside
        with pytest.raises(NotFound):
            await jobs.get(rec.id)
        assert (await jobs.get(kept.id)).owner == "someone"  # what was there stays
    finally:
        await engine.dispose()


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    metadata = MetaData()
    async with engine.connect() as conn:
        await conn.run_sync(metadata.reflect)
        return {
            name: (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for name, table in metadata.tables.items()
            if not name.startswith("alembic")
        }


SERVICES = {
    "compiler": "services.compiler.app",
    "trainer": "services.trainer.app",
    "tracker": "services.tracker.app",
    "authz": "gateway.authz.app",
}


@pytest.mark.integration
@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_a_services_warm_up_leaves_no_row_behind(
    service: str, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURAL_DATABASE_URL", db_url)
    monkeypatch.setenv("NEURAL_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("NEURAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEURAL_AUTHZ_PRIVATE_KEY_FILE", str(generate(tmp_path / "keys")[0]))
    build: Callable[[Settings], Awaitable[object]] = importlib.import_module(
        SERVICES[service]
    ).build
    app = await build(load(service))
    try:
        before = await row_counts(app.engine)  # type: ignore[attr-defined]
        warmup = app.spec.warmup  # type: ignore[attr-defined]
        assert warmup is not None
        await warmup()
        assert await row_counts(app.engine) == before  # type: ignore[attr-defined]
    finally:
        await app.close()  # type: ignore[attr-defined]
