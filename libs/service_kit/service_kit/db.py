"""The database: one async SQLAlchemy engine per process, Alembic migrations per owner.

PostgreSQL through asyncpg in production, SQLite through aiosqlite as the embedded default.
Each service owns its tables (named with its prefix) and its own Alembic version table, and
migrates them at start."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger("neural.db")


# Connections each process keeps open to PostgreSQL. A process runs on one core, and a call
# holds a connection only while its statements travel (a keyed read: well under a millisecond
# on a local network), not while it decodes, builds or encodes messages (most of its CPU: 5-9
# ms for a GetRun): on one core a few connections are busy at any moment, and 10 cover the
# bursts where many calls wait on the database at once. More would add PostgreSQL backends
# (each several MB of its memory) that one core cannot keep busy. NEURAL_DB_POOL_SIZE sets it.
POOL_SIZE = 10
# No overflow: SQLAlchemy closes an overflow connection when it is returned, so a steady load
# just above the pool opened and closed a PostgreSQL session per call (1,665 sessions in 3
# minutes for 50 readers). Past the pool a call waits for a connection instead (the pool is a
# queue); after POOL_TIMEOUT_S it fails UNAVAILABLE (a TimeoutError) rather than wait on.
POOL_TIMEOUT_S = 10.0
# What PostgreSQL's pg_stat_activity shows for the connections (server.main names them
# after the service: "neural-tracker").
_application_name = "neural"


def name_connections(name: str) -> None:
    """The application_name of the engines made from now on (each service sets its own)."""
    global _application_name
    _application_name = name[:63]  # PostgreSQL's NAMEDATALEN


def make_engine(url: str, pool_size: int = POOL_SIZE) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:  # WAL: readers never block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL syncs at checkpoints rather than every commit: a power cut may
            # lose the last commits, never the database's consistency.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=True,
        connect_args={"server_settings": {"application_name": _application_name}},
    )


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), timeout=2)
        return True
    except Exception:
        return False


def _config(script_location: Path, version_table: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["version_table"] = version_table
    return cfg


def _lock_key(version_table: str) -> int:
    # a stable 63-bit key per owner, so owners migrate in parallel and each one alone
    return int.from_bytes(hashlib.sha256(version_table.encode()).digest()[:8], "big") >> 1


async def migrate(engine: AsyncEngine, script_location: Path, version_table: str) -> None:
    """Upgrade the owner's tables to the newest revision (from empty on a new database).

    Every replica of a service migrates at its start, and `python -m services.migrate` may run
    beside them: on PostgreSQL a transaction-scoped advisory lock makes them take turns, so the
    second finds the schema at head instead of failing on a half-made table. (SQLite's write
    lock does the same for one file.)"""

    def upgrade(sync_conn: Any) -> None:
        cfg = _config(script_location, version_table)
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(version_table)}
            )
        await conn.run_sync(upgrade)


async def revisions(
    engine: AsyncEngine, script_location: Path, version_table: str
) -> tuple[set[str], set[str]]:
    """(the revisions the database is at, the scripts' heads): equal when up to date."""

    def read(sync_conn: Any) -> set[str]:
        context = MigrationContext.configure(sync_conn, opts={"version_table": version_table})
        return set(context.get_current_heads())

    async with engine.connect() as conn:
        current = await conn.run_sync(read)
    heads = set(ScriptDirectory.from_config(_config(script_location, version_table)).get_heads())
    return current, heads


async def prepare(
    engine: AsyncEngine,
    script_location: Path,
    version_table: str,
    migrate_at_start: bool,
    timeout_s: float = 300,
) -> None:
    """The owner's tables at head before a service serves: migrated here, or (where
    `python -m services.migrate` runs first, NEURAL_MIGRATE_AT_START=0) waited for."""
    if migrate_at_start:
        await migrate(engine, script_location, version_table)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waited = False
    while True:
        try:
            current, heads = await revisions(engine, script_location, version_table)
        except (OSError, DBAPIError):  # the database is not up yet
            current, heads = set(), {"?"}
        if current == heads:
            return
        if loop.time() >= deadline:
            raise RuntimeError(
                f"{version_table} is at {sorted(current) or 'nothing'}, this code needs "
                f"{sorted(heads)}: run `python -m services.migrate` (NEURAL_MIGRATE_AT_START=0)"
            )
        if not waited:
            log.info("waiting for migrations", extra={"fields": {"table": version_table}})
            waited = True
        await asyncio.sleep(0.5)


def run_env(target_metadata: MetaData) -> None:
    """The body of every owner's migrations/env.py (it runs on the connection `migrate` gives)."""
    from alembic import context

    cfg = context.config
    connection = cfg.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=cfg.attributes["version_table"],
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session, session.begin():
        yield session
