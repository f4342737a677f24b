"""Run search: a parsed filter (filters.py) and order_by become one SQL query over the runs of
the experiments the caller sees, paged by offset."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from service_kit import owners, pagination
from service_kit.errors import FieldViolation, InvalidArgument
from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import filters
from ..tables import experiments, latest_metrics, params, runs, tags
from .common import at_most

TOKEN = "tracker_search_runs"


class RunSearch:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def runs(
        self,
        owner: str | None,
        experiment_ids: Sequence[str],
        text: str,
        order_by: Sequence[str],
        size: int,
        token: str,
    ) -> tuple[list[Any], str]:
        at_most(len(experiment_ids), "experiment_ids")
        at_most(len(order_by), "order_by", 20)
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
        (offset,) = pagination.decode(token, TOKEN, (pagination.OFFSET,), context) or (0,)
        async with self.sessions() as s:
            rows = (await s.execute(query.order_by(*columns).offset(offset).limit(n + 1))).all()
        more = len(rows) > n
        return rows[:n], pagination.encode(TOKEN, (offset + n,), context) if more else ""


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
