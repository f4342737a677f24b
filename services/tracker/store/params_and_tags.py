"""A run's params (written once) and tags (set and removed freely)."""

from __future__ import annotations

from collections.abc import Sequence

from service_kit import db
from service_kit.errors import FieldViolation, InvalidArgument
from sqlalchemy import and_, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..tables import params, tags
from .common import MAX_VALUE, at_most, check_key
from .runs import Runs


class Params:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], runs: Runs) -> None:
        self.sessions = sessions
        self.runs = runs

    async def log(self, run_id: str, owner: str | None, values: dict[str, str]) -> None:
        """Params are write-once: the same value again is fine, a different one is an error."""
        at_most(len(values), "params")
        await self.runs.get(run_id, owner)
        for k, v in values.items():
            check_key(k, "params")
            if len(v) > MAX_VALUE:
                raise InvalidArgument(
                    f"param {k!r} is longer than {MAX_VALUE} characters",
                    [FieldViolation(f"params[{k}]", "too long")],
                )
        async with db.transaction(self.sessions) as s:
            existing = {
                r.key: r.value
                for r in await s.execute(
                    select(params).where(
                        and_(params.c.run_id == run_id, params.c.key.in_(list(values)))
                    )
                )
            }
            clash = [k for k, v in values.items() if k in existing and existing[k] != v]
            if clash:
                raise InvalidArgument(
                    f"param {clash[0]!r} is already {existing[clash[0]]!r}: params are "
                    "written once",
                    [FieldViolation(f"params[{k}]", "already set") for k in clash],
                )
            new = [
                dict(run_id=run_id, key=k, value=v) for k, v in values.items() if k not in existing
            ]
            if new:
                await s.execute(insert(params), new)


class Tags:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], runs: Runs) -> None:
        self.sessions = sessions
        self.runs = runs

    async def set(
        self, run_id: str, owner: str | None, values: dict[str, str], remove: Sequence[str] = ()
    ) -> None:
        """Set `values` and remove the keys in `remove`, in one transaction."""
        at_most(len(values), "tags")
        at_most(len(remove), "delete_keys")
        await self.runs.get(run_id, owner)
        for k in values:
            check_key(k, "tags")
        async with db.transaction(self.sessions) as s:
            keys = list(values) + list(remove)
            if keys:
                await s.execute(
                    delete(tags).where(and_(tags.c.run_id == run_id, tags.c.key.in_(keys)))
                )
            if values:
                await s.execute(
                    insert(tags),
                    [dict(run_id=run_id, key=k, value=v[:MAX_VALUE]) for k, v in values.items()],
                )
