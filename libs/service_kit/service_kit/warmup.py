"""Helpers for a service's start-up warm-up (`ServiceSpec.warmup`).

SQLAlchemy compiles each statement the first time it runs and caches it on the engine, and a
first INSERT also builds the ORM's and the dialect's per-table state: milliseconds that the
first call of each RPC would otherwise pay. A warm-up runs the stores' own reads with keys that
match nothing, and their writes inside a `rehearsal`, which rolls all of them back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from .errors import NotFound

NOBODY = "warm-up"  # an owner, an id and a name no row has


@contextlib.asynccontextmanager
async def rehearsal(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on one connection whose work is rolled back at the end: a store given them
    runs its statements for real and leaves nothing behind (its commits do not reach the
    connection's transaction, "rollback_only"). Other writers wait for the rehearsal's few
    milliseconds, as for any transaction."""
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield async_sessionmaker(
                bind=conn, expire_on_commit=False, join_transaction_mode="rollback_only"
            )
        finally:
            await outer.rollback()


async def missing(read: Awaitable[Any]) -> None:
    """Await a read of `NOBODY`, which finds nothing: NOT_FOUND is the expected answer."""
    with contextlib.suppress(NotFound):
        await read


__all__ = ["NOBODY", "missing", "rehearsal"]
