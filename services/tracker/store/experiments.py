"""Experiments: create, read, list, rename, soft-delete and restore, purge."""

from __future__ import annotations

import uuid
from typing import Any

from service_kit import db, owners, pagination
from service_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    shown,
)
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..tables import (
    artifacts,
    experiments,
    latest_metrics,
    metric_blocks,
    metric_summaries,
    metrics,
    params,
    runs,
    tags,
)
from .common import now

MAX_NAME = 500


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME:
        raise InvalidArgument(
            f"experiment name must be 1-{MAX_NAME} characters",
            [FieldViolation("experiment.name", "required")],
        )


class Experiments:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], owner_of: dict[str, str]
    ) -> None:
        self.sessions = sessions
        self.owner_of = owner_of  # the runs' owner cache, emptied of the runs a purge removes

    async def create(self, owner: str, name: str) -> Any:
        _check_name(name)
        row = dict(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            created_at=now(),
            updated_at=now(),
            deleted_at=None,
        )
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(insert(experiments).values(**row))
        except IntegrityError:
            raise await self._name_taken(owner, name) from None
        return await self.get(row["id"], owner)

    async def _name_taken(self, owner: str, name: str) -> AlreadyExists:
        """Why `name` is taken: a deleted experiment keeps its name until it is purged (as in
        MLflow), and the caller is told which, so they can restore or purge it."""
        async with self.sessions() as s:
            holder = (
                await s.execute(
                    select(experiments.c.id, experiments.c.deleted_at).where(
                        experiments.c.owner == owner, experiments.c.name == name
                    )
                )
            ).first()
        if holder is not None and holder.deleted_at is not None:
            return AlreadyExists(
                f"your deleted experiment {holder.id} holds the name {name!r}: restore it "
                "(RestoreExperiment) or purge it (PurgeExperiment) to use the name"
            )
        return AlreadyExists(f"you already have an experiment named {name!r}")

    async def get(self, exp_id: str, owner: str | None, include_deleted: bool = True) -> Any:
        async with self.sessions() as s:
            row = (await s.execute(select(experiments).where(experiments.c.id == exp_id))).first()
        if (
            row is None
            or not owners.visible(row.owner, owner)
            or (not include_deleted and row.deleted_at is not None)
        ):
            raise NotFound(f"no experiment {shown(exp_id)}")
        return row

    async def page(
        self, owner: str | None, size: int, token: str, name: str, include_deleted: bool
    ) -> tuple[list[Any], str]:
        """A page of the experiments `owner` sees, newest first; `name` is a substring."""
        query = owners.restrict(select(experiments), experiments.c.owner, owner)
        if name:
            query = query.where(experiments.c.name.contains(name, autoescape=True))
        if not include_deleted:
            query = query.where(experiments.c.deleted_at.is_(None))
        return await pagination.newest_first(self.sessions, experiments, query, token, size)

    async def rename(self, exp_id: str, owner: str | None, name: str) -> Any:
        row = await self.get(exp_id, owner)
        _check_name(name)
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    update(experiments)
                    .where(experiments.c.id == exp_id)
                    .values(name=name, updated_at=now())
                )
        except IntegrityError:
            raise await self._name_taken(row.owner, name) from None
        return await self.get(exp_id, owner)

    async def set_deleted(self, exp_id: str, owner: str | None, deleted: bool) -> Any:
        await self.get(exp_id, owner)
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(experiments)
                .where(experiments.c.id == exp_id)
                .values(deleted_at=now() if deleted else None, updated_at=now())
            )
        return await self.get(exp_id, owner)

    async def purge(self, exp_id: str, owner: str | None) -> list[str]:
        """Remove a soft-deleted experiment and its runs; returns the run ids (for artifacts)."""
        row = await self.get(exp_id, owner)
        if row.deleted_at is None:
            raise FailedPrecondition("only a deleted experiment can be purged: delete it first")
        async with db.transaction(self.sessions) as s:
            # Locking the runs first makes a concurrent metric batch wait for this purge and
            # then fail on its foreign key, rather than leave points behind (tracker_metrics
            # has no foreign key of its own: see the points package).
            run_ids = [
                r.id
                for r in (
                    await s.execute(
                        select(runs.c.id).where(runs.c.experiment_id == exp_id).with_for_update()
                    )
                ).all()
            ]
            for table in (
                metrics,
                metric_blocks,
                metric_summaries,
                latest_metrics,
                params,
                tags,
                artifacts,
            ):
                await s.execute(
                    delete(table).where(
                        table.c.run_id.in_(select(runs.c.id).where(runs.c.experiment_id == exp_id))
                    )
                )
            await s.execute(delete(runs).where(runs.c.experiment_id == exp_id))
            await s.execute(delete(experiments).where(experiments.c.id == exp_id))
        for run_id in run_ids:
            self.owner_of.pop(run_id, None)
        return run_ids
