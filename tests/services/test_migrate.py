"""`python -m services.migrate` and the services' start-up schema step, against real PostgreSQL
and SQLite: from empty to head, `--check`, replicas migrating at once, waiting for a Job."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from service_kit import db
from sqlalchemy import inspect

from services import migrate
from tests.services.conftest import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]


def run_migrate(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEURAL_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "services.migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    "owner,module",
    [
        ("authz", "gateway.authz.store"),
        ("compiler", "services.compiler.app"),
        ("trainer", "services.trainer.app"),
        ("tracker", "services.tracker.app"),
        ("deployer", "services.deployer.app"),
    ],
)
def test_owners_are_the_ones_the_services_migrate(owner: str, module: str) -> None:
    found = {o.name: o for o in migrate.OWNERS}[owner]
    app = importlib.import_module(module)
    assert found.scripts == app.MIGRATIONS
    assert found.version_table == app.VERSION_TABLE


@pytest.mark.integration
async def test_from_empty_to_head_then_nothing_to_do(db_url: str) -> None:
    checked = await asyncio.to_thread(run_migrate, db_url, "--check")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert {line.split(":")[0] for line in checked.stdout.split("behind: ")[1:]} == {
        o.name for o in migrate.OWNERS
    }

    first = await asyncio.to_thread(run_migrate, db_url)
    assert first.returncode == 0, first.stderr
    assert "tracker: empty -> " in first.stdout

    engine = db.make_engine(db_url)
    try:
        async with engine.connect() as conn:
            names = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()
    for owner in migrate.OWNERS:
        assert owner.version_table in names
    assert {"authz_api_keys", "compiler_models", "tracker_runs", "deployer_deployments"} <= names

    again = await asyncio.to_thread(run_migrate, db_url)
    assert again.returncode == 0 and "-> " not in again.stdout, again.stdout
    assert (await asyncio.to_thread(run_migrate, db_url, "--check")).returncode == 0


@pytest.mark.integration
async def test_replicas_starting_together_on_postgresql_all_succeed() -> None:
    # Without the advisory lock, the CREATE TABLEs of one owner's copies block or fail.
    name, url = await create_pg_database()
    engines = [db.make_engine(url) for _ in range(4)]
    owner = {o.name: o for o in migrate.OWNERS}["tracker"]
    try:
        together = asyncio.gather(
            *(db.migrate(e, owner.scripts, owner.version_table) for e in engines)
        )
        await asyncio.wait_for(together, 60)  # without the lock they block one another
        current, heads = await db.revisions(engines[0], owner.scripts, owner.version_table)
        assert current == heads
    finally:
        for e in engines:
            await e.dispose()
        await drop_pg_database(name)


@pytest.mark.integration
async def test_a_service_that_does_not_migrate_waits_for_the_job(db_url: str) -> None:
    owner = {o.name: o for o in migrate.OWNERS}["deployer"]
    engine = db.make_engine(db_url)
    try:
        with pytest.raises(RuntimeError, match=r"services\.migrate"):
            await db.prepare(engine, owner.scripts, owner.version_table, False, timeout_s=0.6)
        waiting = asyncio.create_task(
            db.prepare(engine, owner.scripts, owner.version_table, False, timeout_s=60)
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()  # the schema is empty: it waits
        job = await asyncio.to_thread(run_migrate, db_url, "--owner", "deployer")
        assert job.returncode == 0, job.stderr
        await asyncio.wait_for(waiting, 30)
    finally:
        await engine.dispose()


@pytest.mark.integration
def test_an_unreachable_database_is_a_message_not_a_traceback() -> None:
    done = run_migrate("postgresql+asyncpg://nobody@127.0.0.1:1/none", "--check")
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.unit
def test_a_bad_url_is_refused_by_the_settings() -> None:
    done = run_migrate("mysql://x/y")
    assert done.returncode == 2 and "NEURAL_DATABASE_URL" in done.stderr
