"""Real PostgreSQL (a fresh database per test) and SQLite, and the real Redis, for service tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

# re-exported for the tests: one set of ports given out in a process, the stacks' included
from scripts.local_stack import free_port as free_port

PG_HOST = "127.0.0.1"
PG_USER = "postgres"
# The machine's Redis by default; NEURAL_TEST_REDIS_PORT points a run at another one, so two
# runs side by side (fixed db numbers, flushed by the e2e tests) do not meet.
REDIS_PORT = int(os.environ.get("NEURAL_TEST_REDIS_PORT", "6379"))
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/9"


def redis_url(db: int) -> str:
    return f"redis://127.0.0.1:{REDIS_PORT}/{db}"


async def create_pg_database() -> tuple[str, str]:
    name = f"neural_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:5432/{name}"


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres")
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'neural.db'}"
        return
    name, url = await create_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(name)
