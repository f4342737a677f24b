"""Runs: create, read, update; a run's details (params, tags, latest metrics); runs and their
counts per experiment. Also the cache of run owners that lets metric writes skip a query."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from service_kit import db, owners
from service_kit.errors import FieldViolation, InvalidArgument, NotFound, shown
from service_kit.keyed_reads import KeyedReads
from sqlalchemy import Row, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..tables import latest_metrics, params, runs, tags
from .common import now
from .experiments import Experiments
from .metrics import Point

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
MAX_OWNERS = 100_000  # run owners cached; the cache starts over past this many

# A run by id. Built once, as the details' statements: see service_kit.keyed_reads.
BY_ID = select(runs).where(runs.c.id == bindparam("id"))


def _details_of(match: Callable[[Any], Any]) -> tuple[Any, Any, Any]:
    """The statements reading params, tags and latest metrics of the runs `match` selects
    (given each table's run_id column)."""
    return (
        select(params).where(match(params.c.run_id)),
        select(tags).where(match(tags.c.run_id)),
        select(latest_metrics).where(match(latest_metrics.c.run_id)).order_by(latest_metrics.c.key),
    )


# Of one run, and of several: an IN list costs SQLAlchemy more per call (its values are
# spliced into the SQL each time).
DETAILS_OF_ONE = _details_of(lambda run_id: run_id == bindparam("id"))
DETAILS_OF_MANY = _details_of(lambda run_id: run_id.in_(bindparam("ids", expanding=True)))


class Runs:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        experiments: Experiments,
        owner_of: dict[str, str],
        reads: KeyedReads | None = None,
    ) -> None:
        self.sessions = sessions
        self.experiments = experiments
        self.owner_of = owner_of
        # The engine's reader for the keyed reads; None: through `sessions` (a rehearsal's,
        # whose rows only its own connection sees).
        self.reads = reads

    async def create(
        self, exp_id: str, owner: str, name: str, job_id: str = "", start: dt.datetime | None = None
    ) -> Any:
        exp = await self.experiments.get(exp_id, owner, include_deleted=False)
        run_id = str(uuid.uuid4())
        async with db.transaction(self.sessions) as s:
            await s.execute(
                insert(runs).values(
                    id=run_id,
                    experiment_id=exp.id,
                    owner=exp.owner,
                    name=name[:500] or run_id[:8],
                    status="RUNNING",
                    job_id=job_id,
                    start_time=start or now(),
                    end_time=None,
                    created_at=now(),
                )
            )
        return await self.get(run_id, owner)

    async def _all(self, *queries: tuple[Any, dict[str, Any]]) -> list[Sequence[Row[Any]]]:
        if self.reads is not None:
            return await self.reads.all(*queries)
        async with self.sessions() as s:
            return [(await s.execute(q, p)).all() for q, p in queries]

    async def get(self, run_id: str, owner: str | None) -> Any:
        (found,) = await self._all((BY_ID, {"id": run_id}))
        return _visible(found, run_id, owner)

    async def read(self, run_id: str, owner: str | None) -> tuple[Any, dict[str, Any]]:
        """The run and its details (GetRun's answer), read together."""
        key = {"id": run_id}
        found, *details = await self._all((BY_ID, key), *((q, key) for q in DETAILS_OF_ONE))
        row = _visible(found, run_id, owner)
        return row, _details([run_id], *details)[run_id]

    async def check(self, run_id: str, owner: str | None) -> None:
        """The run exists and `owner` may write to it. A run's owner never changes, so the
        answer is cached: the hot path (logging metrics) costs no query for it."""
        known = self.owner_of.get(run_id)
        if known is None:
            known = (await self.get(run_id, None)).owner
            if len(self.owner_of) > MAX_OWNERS:
                self.owner_of.clear()
            self.owner_of[run_id] = known
        if not owners.visible(known, owner):
            raise NotFound(f"no run {shown(run_id)}")

    def forget(self, run_id: str) -> None:
        """The run is gone: its cached owner goes too."""
        self.owner_of.pop(run_id, None)

    async def update(self, run_id: str, owner: str | None, **values: Any) -> Any:
        row = await self.get(run_id, owner)
        if not values:  # an update that sets nothing (no UPDATE without a SET)
            return row
        if "status" in values and values["status"] not in STATUSES:
            raise InvalidArgument(
                "status must be RUNNING, FINISHED, FAILED or KILLED",
                [FieldViolation("run.status", "unknown status")],
            )
        if values.get("status") in ("FINISHED", "FAILED", "KILLED") and "end_time" not in values:
            values["end_time"] = now()
        async with db.transaction(self.sessions) as s:
            await s.execute(update(runs).where(runs.c.id == run_id).values(**values))
        return await self.get(run_id, owner)

    async def details(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """params, tags and latest metrics of each run, in three queries."""
        if not run_ids:
            return {}
        one = len(run_ids) == 1
        key = {"id": run_ids[0]} if one else {"ids": list(run_ids)}
        found = await self._all(*((q, key) for q in (DETAILS_OF_ONE if one else DETAILS_OF_MANY)))
        return _details(run_ids, *found)

    async def counts(self, exp_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Runs per experiment by status."""
        out: dict[str, dict[str, int]] = {e: {} for e in exp_ids}
        query = (
            select(runs.c.experiment_id, runs.c.status, func.count())
            .where(runs.c.experiment_id.in_(list(exp_ids)))
            .group_by(runs.c.experiment_id, runs.c.status)
        )
        async with self.sessions() as s:
            for exp_id, status, n in await s.execute(query):
                out[exp_id][status] = n
        return out

    async def of_experiments(self, exp_ids: Sequence[str]) -> list[Any]:
        async with self.sessions() as s:
            return list(
                (await s.execute(select(runs).where(runs.c.experiment_id.in_(list(exp_ids))))).all()
            )


def _visible(found: Sequence[Row[Any]], run_id: str, owner: str | None) -> Any:
    if not found or not owners.visible(found[0].owner, owner):
        raise NotFound(f"no run {shown(run_id)}")
    return found[0]


def _details(
    run_ids: Sequence[str],
    param_rows: Sequence[Row[Any]],
    tag_rows: Sequence[Row[Any]],
    latest_rows: Sequence[Row[Any]],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {r: {"params": {}, "tags": {}, "latest": []} for r in run_ids}
    for row in param_rows:
        out[row.run_id]["params"][row.key] = row.value
    for row in tag_rows:
        out[row.run_id]["tags"][row.key] = row.value
    for row in latest_rows:
        out[row.run_id]["latest"].append(Point(row.key, row.value, row.step, row.timestamp))
    return out
