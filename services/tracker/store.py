"""The tracker's storage: experiments, runs, params, tags, metrics and run search.

Owners: every experiment belongs to the identity that created it; `owner=None` means an
admin (sees everything). Another owner's experiment or run is NOT_FOUND, never revealed.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from service_kit import db, owners, pagination
from service_kit.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    shown,
)
from sqlalchemy import and_, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from . import filters
from .points import Batch, Columns, UnknownRun, for_url, newest
from .tables import (
    artifacts,
    experiments,
    latest_metrics,
    metric_blocks,
    metrics,
    params,
    runs,
    tags,
)

MAX_BATCH = 1000
MAX_ENTRIES = 1000  # params, tags, keys or ids named in one call
SAMPLE_READ = 100_000  # points read at a time to downsample a series
MAX_KEY = 250
MAX_VALUE = 6000
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
# Page tokens: a metric history's (mode, last step sent, points at that step already sent or
# the offset into the sample), and run search's offset.
HISTORY = "tracker_metric_history"
HISTORY_FIELDS = (pagination.one_of("step", "sample"), pagination.INT64, pagination.OFFSET)
SEARCH = "tracker_search_runs"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


class Point(NamedTuple):
    key: str
    value: float
    step: int
    timestamp: int = 0  # ms since the epoch; 0 means "now"


class Series(NamedTuple):
    """A page of one metric's history, as numpy columns."""

    steps: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray
    next_page_token: str
    downsampled: bool


def _after(page: Columns, from_step: int | None, skip: int) -> tuple[int, int]:
    """The keyset cursor past a full page: its last step, and how many points at that step
    were sent already (steps may repeat, even across pages)."""
    end = int(page.steps[-1])
    n = int((page.steps == end).sum())
    if from_step == end and n == len(page):
        n += skip
    return end, n


def _key(name: str, what: str) -> None:
    if not name or len(name) > MAX_KEY or name != name.strip():
        raise InvalidArgument(
            f"{what} key {name[:50]!r} must be 1-{MAX_KEY} characters without surrounding spaces",
            [FieldViolation(what, "bad key")],
        )


def _at_most(count: int, field: str, limit: int = MAX_ENTRIES) -> None:
    """One call's entries stay far below what one statement can bind (32767 values on
    PostgreSQL): more is the caller's mistake, not a database outage."""
    if count > limit:
        raise InvalidArgument(
            f"at most {limit} {field} per call, got {count}: send them in several calls",
            [FieldViolation(field, f"at most {limit}")],
        )


class TrackerStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = db.sessions(engine)
        self.points = for_url(engine.url)
        self._owners: dict[str, str] = {}

    async def close(self) -> None:
        await self.points.close()
        await self.engine.dispose()

    # ------------------------------------------------------------------ experiments
    async def create_experiment(self, owner: str, name: str) -> Any:
        if not name.strip() or len(name) > 500:
            raise InvalidArgument(
                "experiment name must be 1-500 characters",
                [FieldViolation("experiment.name", "required")],
            )
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
        return await self.get_experiment(row["id"], owner)

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

    async def get_experiment(
        self, exp_id: str, owner: str | None, include_deleted: bool = True
    ) -> Any:
        async with self.sessions() as s:
            row = (await s.execute(select(experiments).where(experiments.c.id == exp_id))).first()
        if (
            row is None
            or not owners.visible(row.owner, owner)
            or (not include_deleted and row.deleted_at is not None)
        ):
            raise NotFound(f"no experiment {shown(exp_id)}")
        return row

    async def list_experiments(
        self, owner: str | None, size: int, token: str, name: str, include_deleted: bool
    ) -> tuple[list[Any], str]:
        query = owners.restrict(select(experiments), experiments.c.owner, owner)
        if name:
            query = query.where(experiments.c.name.contains(name, autoescape=True))
        if not include_deleted:
            query = query.where(experiments.c.deleted_at.is_(None))
        return await pagination.newest_first(self.sessions, experiments, query, token, size)

    async def rename_experiment(self, exp_id: str, owner: str | None, name: str) -> Any:
        row = await self.get_experiment(exp_id, owner)
        if not name.strip() or len(name) > 500:
            raise InvalidArgument(
                "experiment name must be 1-500 characters",
                [FieldViolation("experiment.name", "required")],
            )
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    update(experiments)
                    .where(experiments.c.id == exp_id)
                    .values(name=name, updated_at=now())
                )
        except IntegrityError:
            raise await self._name_taken(row.owner, name) from None
        return await self.get_experiment(exp_id, owner)

    async def set_deleted(self, exp_id: str, owner: str | None, deleted: bool) -> Any:
        await self.get_experiment(exp_id, owner)
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(experiments)
                .where(experiments.c.id == exp_id)
                .values(deleted_at=now() if deleted else None, updated_at=now())
            )
        return await self.get_experiment(exp_id, owner)

    async def purge_experiment(self, exp_id: str, owner: str | None) -> list[str]:
        """Remove a soft-deleted experiment and its runs; returns the run ids (for artifacts)."""
        row = await self.get_experiment(exp_id, owner)
        if row.deleted_at is None:
            raise FailedPrecondition("only a deleted experiment can be purged: delete it first")
        async with db.transaction(self.sessions) as s:
            # Locking the runs first makes a concurrent metric batch wait for this purge and
            # then fail on its foreign key, rather than leave points behind (tracker_metrics
            # has no foreign key of its own: see points.py).
            run_ids = [
                r.id
                for r in (
                    await s.execute(
                        select(runs.c.id).where(runs.c.experiment_id == exp_id).with_for_update()
                    )
                ).all()
            ]
            for table in (metrics, metric_blocks, latest_metrics, params, tags, artifacts):
                await s.execute(
                    delete(table).where(
                        table.c.run_id.in_(select(runs.c.id).where(runs.c.experiment_id == exp_id))
                    )
                )
            await s.execute(delete(runs).where(runs.c.experiment_id == exp_id))
            await s.execute(delete(experiments).where(experiments.c.id == exp_id))
        for run_id in run_ids:
            self._owners.pop(run_id, None)
        return run_ids

    # ------------------------------------------------------------------ runs
    async def create_run(
        self, exp_id: str, owner: str, name: str, job_id: str = "", start: dt.datetime | None = None
    ) -> Any:
        exp = await self.get_experiment(exp_id, owner, include_deleted=False)
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
        return await self.get_run(run_id, owner)

    async def _check_run(self, run_id: str, owner: str | None) -> None:
        """The run exists and `owner` may write to it. A run's owner never changes, so the
        answer is cached: the hot path (logging metrics) costs no query for it."""
        known = self._owners.get(run_id)
        if known is None:
            known = (await self.get_run(run_id, None)).owner
            if len(self._owners) > 100_000:
                self._owners.clear()
            self._owners[run_id] = known
        if not owners.visible(known, owner):
            raise NotFound(f"no run {shown(run_id)}")

    async def get_run(self, run_id: str, owner: str | None) -> Any:
        async with self.sessions() as s:
            row = (await s.execute(select(runs).where(runs.c.id == run_id))).first()
        if row is None or not owners.visible(row.owner, owner):
            raise NotFound(f"no run {shown(run_id)}")
        return row

    async def update_run(self, run_id: str, owner: str | None, **values: Any) -> Any:
        row = await self.get_run(run_id, owner)
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
        return await self.get_run(run_id, owner)

    async def run_details(self, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """params, tags and latest metrics of each run, in three queries."""
        out: dict[str, dict[str, Any]] = {
            r: {"params": {}, "tags": {}, "latest": []} for r in run_ids
        }
        if not run_ids:
            return out
        async with self.sessions() as s:
            for row in await s.execute(select(params).where(params.c.run_id.in_(run_ids))):
                out[row.run_id]["params"][row.key] = row.value
            for row in await s.execute(select(tags).where(tags.c.run_id.in_(run_ids))):
                out[row.run_id]["tags"][row.key] = row.value
            for row in await s.execute(
                select(latest_metrics)
                .where(latest_metrics.c.run_id.in_(run_ids))
                .order_by(latest_metrics.c.key)
            ):
                out[row.run_id]["latest"].append(Point(row.key, row.value, row.step, row.timestamp))
        return out

    # ------------------------------------------------------------------ params and tags
    async def log_params(self, run_id: str, owner: str | None, values: dict[str, str]) -> None:
        """Params are write-once: the same value again is fine, a different one is an error."""
        _at_most(len(values), "params")
        await self.get_run(run_id, owner)
        for k, v in values.items():
            _key(k, "params")
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

    async def set_tags(
        self, run_id: str, owner: str | None, values: dict[str, str], remove: Sequence[str] = ()
    ) -> None:
        _at_most(len(values), "tags")
        _at_most(len(remove), "delete_keys")
        await self.get_run(run_id, owner)
        for k in values:
            _key(k, "tags")
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

    # ------------------------------------------------------------------ metrics
    async def log_metrics(
        self, run_id: str, owner: str | None, points: Sequence[Point], checked_run: bool = False
    ) -> int:
        """Append a batch of points (see log_batch)."""
        keys, values, steps, stamps = zip(*points, strict=True) if points else ((), (), (), ())
        batch = Batch(keys, steps, [float(v) for v in values], stamps)
        return len((await self.log_batch(run_id, owner, batch, checked_run)).keys)

    async def log_batch(
        self, run_id: str, owner: str | None, batch: Batch, checked_run: bool = False
    ) -> Batch:
        """Append a batch atomically and move each series' latest point forward; returns it
        with the timestamps it was stored with. Non-finite values are rejected: they cannot
        be compared or charted."""
        keys, steps, values, stamps = batch
        if len(keys) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} points per batch, got {len(keys)}",
                [FieldViolation("metrics", "too many")],
            )
        if not checked_run:
            await self._check_run(run_id, owner)
        if not keys:
            return batch
        for key in set(keys):
            _key(key, "metrics")
        # One sum in C instead of a test per point; a NaN or an infinity anywhere makes it
        # non-finite (so may an overflow: then the search below finds nothing).
        if not math.isfinite(sum(values)):
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise InvalidArgument(
                        f"metric {keys[i]!r} at step {steps[i]} is {v}: only finite values "
                        "are stored",
                        [FieldViolation(f"metrics[{i}].value", "not finite")],
                    )
        # A moment outside years 1 to 9999 (e.g. seconds = 2**62) cannot be stored or shown.
        if min(stamps) < filters.MIN_MS or max(stamps) > filters.MAX_MS:
            i = next(i for i, t in enumerate(stamps) if not filters.MIN_MS <= t <= filters.MAX_MS)
            raise InvalidArgument(
                f"metric {keys[i]!r} at step {steps[i]} has a timestamp outside years 1 to 9999",
                [FieldViolation(f"metrics[{i}].timestamp", "out of range")],
            )
        if 0 in stamps:
            stamp = now_ms()
            stamps = [t or stamp for t in stamps] if any(stamps) else [stamp] * len(stamps)
        stored = Batch(keys, steps, values, stamps)
        try:
            await self.points.append(run_id, stored, newest(stored))
        except UnknownRun:
            self._owners.pop(run_id, None)
            raise NotFound(f"no run {shown(run_id)}") from None
        return stored

    async def history(
        self, run_id: str, owner: str | None, key: str, max_points: int, size: int, token: str
    ) -> Series:
        """A series ordered by step; with max_points, about that many points spread evenly over
        the steps (first and last kept)."""
        size = pagination.page_size(size, 1000, 10_000)
        # The token says how the first page was read (sampled or not), so a series that grows
        # past max_points while it is being paged keeps the way it started.
        context = (run_id, key, max(max_points, 0))
        cursor = pagination.decode(token, HISTORY, HISTORY_FIELDS, context)
        await self._check_run(run_id, owner)
        if max_points > 0 and (cursor is None or cursor[0] == "sample"):
            offset = 0 if cursor is None else cursor[2]
            sampled = await self._sample(run_id, key, max_points, size, offset, context)
            if sampled is not None:
                return sampled
        # Keyset paging on step, so reading a long history costs the same per page from the
        # first to the last.
        from_step, skip = (None, 0) if cursor is None else (cursor[1], cursor[2])
        got = await self.points.page(run_id, key, from_step, skip, size + 1)
        if len(got) <= size:
            return Series(*got, "", False)
        page = Columns(*(column[:size] for column in got))
        after = _after(page, from_step, skip)
        return Series(*page, pagination.encode(HISTORY, ("step", *after), context), False)

    async def _sample(
        self, run_id: str, key: str, max_points: int, size: int, offset: int, context: Any
    ) -> Series | None:
        """Every k-th point in (step, timestamp) order, and the last, when the series is
        longer than max_points; pages are offsets into that sample, which max_points keeps
        small. None when the whole series fits the first page. The series is read
        SAMPLE_READ points at a time, so memory stays bounded however long it is."""
        total = await self.points.count(run_id, key)
        if total <= max_points and not offset:
            return None
        every = math.ceil(total / max_points)
        kept: list[Columns] = []
        last: Columns | None = None
        seen, from_step, skip = 0, None, 0
        while True:
            got = await self.points.page(run_id, key, from_step, skip, SAMPLE_READ)
            at = np.arange(seen, seen + len(got))
            kept.append(Columns(*(column[at % every == 0] for column in got)))
            seen += len(got)
            if len(got):
                last = Columns(*(column[-1:] for column in got))
            if len(got) < SAMPLE_READ:
                break
            from_step, skip = _after(got, from_step, skip)
        if last is not None and (seen - 1) % every:  # the last point, always
            kept.append(last)
        sample = [np.concatenate(c) for c in zip(*kept, strict=True)]
        more = offset + size < len(sample[0])
        return Series(
            *(column[offset : offset + size] for column in sample),
            pagination.encode(HISTORY, ("sample", 0, offset + size), context) if more else "",
            True,
        )

    # ------------------------------------------------------------------ artifacts
    async def record_artifact(self, run_id: str, path: str, size: int, digest: str) -> None:
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    delete(artifacts).where(
                        and_(artifacts.c.run_id == run_id, artifacts.c.path == path)
                    )
                )
                await s.execute(
                    insert(artifacts).values(
                        run_id=run_id, path=path, size=size, sha256=digest, created_at=now()
                    )
                )
        except IntegrityError:  # the run was purged while its artifact was uploaded
            raise NotFound(f"no run {run_id[:100]!r}") from None

    async def artifact_hashes(self, run_id: str) -> dict[str, str]:
        async with self.sessions() as s:
            return {
                r.path: r.sha256
                for r in await s.execute(select(artifacts).where(artifacts.c.run_id == run_id))
            }

    async def forget_artifacts(self, run_id: str, path: str) -> None:
        """Drop the records of a file, or of everything under a directory."""
        async with db.transaction(self.sessions) as s:
            await s.execute(
                delete(artifacts).where(
                    and_(
                        artifacts.c.run_id == run_id,
                        or_(
                            artifacts.c.path == path,
                            artifacts.c.path.startswith(path + "/", autoescape=True),
                        ),
                    )
                )
            )

    # ------------------------------------------------------------------ search
    async def search_runs(
        self,
        owner: str | None,
        experiment_ids: Sequence[str],
        text: str,
        order_by: Sequence[str],
        size: int,
        token: str,
    ) -> tuple[list[Any], str]:
        _at_most(len(experiment_ids), "experiment_ids")
        _at_most(len(order_by), "order_by", 20)
        try:
            node = filters.parse_filter(text)
            order = filters.parse_order_by(list(order_by))
        except filters.FilterError as exc:
            raise InvalidArgument(
                f"filter: {exc}",
                [
                    FieldViolation(
                        "filter" if "order_by" not in exc.message else "order_by",
                        f"column {exc.column}: {exc.message}",
                    )
                ],
            ) from None
        visible = select(experiments.c.id).where(experiments.c.deleted_at.is_(None))
        visible = owners.restrict(visible, experiments.c.owner, owner)
        if experiment_ids:
            visible = visible.where(experiments.c.id.in_(list(experiment_ids)))
        query = select(runs).where(runs.c.experiment_id.in_(visible))
        if node is not None:
            query = query.where(_clause(node))
        columns = []
        for entity, key, desc in order:
            col = _order_column(entity, key)
            columns += [col.is_(None), col.desc() if desc else col.asc()]  # nulls last
        columns += [runs.c.created_at.desc(), runs.c.id.desc()]
        n = pagination.page_size(size)
        # An offset means something only under the same filter and order: the token is bound
        # to them.
        context = (text, list(order_by), sorted(experiment_ids))
        (offset,) = pagination.decode(token, SEARCH, (pagination.OFFSET,), context) or (0,)
        async with self.sessions() as s:
            rows = (await s.execute(query.order_by(*columns).offset(offset).limit(n + 1))).all()
        more = len(rows) > n
        return rows[:n], pagination.encode(SEARCH, (offset + n,), context) if more else ""


def _text_op(column: Any, op: str, value: str) -> Any:
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == "like":
        return column.like(value)
    if op == "not like":
        return column.not_like(value)
    lower = func.lower(column).like(func.lower(literal(value)))
    return lower if op == "ilike" else ~lower


def _num_op(column: Any, op: str, value: Any) -> Any:
    return {
        "=": column == value,
        "!=": column != value,
        "<": column < value,
        "<=": column <= value,
        ">": column > value,
        ">=": column >= value,
    }[op]


def _clause(node: filters.Node) -> Any:
    if isinstance(node, filters.And):
        return and_(*(_clause(n) for n in node.items))
    if isinstance(node, filters.Or):
        return or_(*(_clause(n) for n in node.items))
    c = node
    if c.entity == "metrics":
        return exists().where(
            and_(
                latest_metrics.c.run_id == runs.c.id,
                latest_metrics.c.key == c.key,
                _num_op(latest_metrics.c.value, c.op, c.value),
            )
        )
    if c.entity in ("params", "tags"):
        table = params if c.entity == "params" else tags
        return exists().where(
            and_(
                table.c.run_id == runs.c.id,
                table.c.key == c.key,
                _text_op(table.c.value, c.op, str(c.value)),
            )
        )
    if c.key in ("start_time", "end_time"):
        moment = dt.datetime.fromtimestamp(float(c.value) / 1000, dt.UTC)
        return _num_op(runs.c[c.key], c.op, moment)
    column = {"status": runs.c.status, "run_name": runs.c.name, "run_id": runs.c.id}[c.key]
    value = str(c.value).upper() if c.key == "status" and "like" not in c.op else str(c.value)
    return _text_op(column, c.op, value)


def _order_column(entity: str, key: str) -> Any:
    if entity == "metrics":
        return (
            select(latest_metrics.c.value)
            .where(and_(latest_metrics.c.run_id == runs.c.id, latest_metrics.c.key == key))
            .scalar_subquery()
        )
    if entity in ("params", "tags"):
        table = params if entity == "params" else tags
        return (
            select(table.c.value)
            .where(and_(table.c.run_id == runs.c.id, table.c.key == key))
            .scalar_subquery()
        )
    return {
        "status": runs.c.status,
        "run_name": runs.c.name,
        "run_id": runs.c.id,
        "start_time": runs.c.start_time,
        "end_time": runs.c.end_time,
    }[key]


async def series(
    store: TrackerStore, run_ids: Sequence[str], keys: Sequence[str], limit: int = 200_000
) -> dict[str, dict[str, list[tuple[int, float, int]]]]:
    """(step, value, timestamp) per run and key, ordered by step (all keys when none given),
    at most `limit` points in all."""
    _at_most(len(keys), "metric_keys")
    out: dict[str, dict[str, list[tuple[int, float, int]]]] = {r: {} for r in run_ids}
    found = []
    ids = list(run_ids)
    # Every series has a latest point: its row names the series without reading it. The runs
    # of many experiments are asked for a slice at a time, within what a statement can bind.
    for at in range(0, len(ids), MAX_ENTRIES):
        query = select(latest_metrics.c.run_id, latest_metrics.c.key).where(
            latest_metrics.c.run_id.in_(ids[at : at + MAX_ENTRIES])
        )
        if keys:
            query = query.where(latest_metrics.c.key.in_(list(keys)))
        async with store.sessions() as s:
            found += (
                await s.execute(query.order_by(latest_metrics.c.run_id, latest_metrics.c.key))
            ).all()
    for run_id, key in found:
        if limit <= 0:
            break
        got: Columns = await store.points.page(run_id, key, None, 0, limit)
        out[run_id][key] = got.rows()
        limit -= len(got)
    return out


async def run_counts(store: TrackerStore, exp_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Runs per experiment by status."""
    out: dict[str, dict[str, int]] = {e: {} for e in exp_ids}
    query = (
        select(runs.c.experiment_id, runs.c.status, func.count())
        .where(runs.c.experiment_id.in_(list(exp_ids)))
        .group_by(runs.c.experiment_id, runs.c.status)
    )
    async with store.sessions() as s:
        for exp_id, status, n in await s.execute(query):
            out[exp_id][status] = n
    return out


async def runs_of(store: TrackerStore, exp_ids: Sequence[str]) -> list[Any]:
    async with store.sessions() as s:
        return list(
            (await s.execute(select(runs).where(runs.c.experiment_id.in_(list(exp_ids))))).all()
        )
