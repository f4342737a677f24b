"""Every delivery attempt, recorded in the service's `{prefix}_webhook_deliveries` table and
shown on its job (attempt 0: the event could not be queued)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from neural.v1 import common_pb2
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import db
from .validation import MAX_URL_CHARS

MAX_ERROR_CHARS = 500


def delivery_table(metadata: MetaData, prefix: str) -> Table:
    name = f"{prefix}_webhook_deliveries"
    return Table(
        name,
        metadata,
        Column(
            "id",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("job_id", String(36), nullable=False),
        # one per (event, hook), the same on every retry
        Column("delivery_id", String(36), nullable=False, index=True),
        Column("url", String(MAX_URL_CHARS), nullable=False),
        Column("event", String(16), nullable=False),
        Column("attempt", Integer, nullable=False),
        Column("status_code", Integer, nullable=False, default=0, server_default="0"),
        Column("delivered", Boolean, nullable=False, default=False, server_default=false()),
        Column("error", Text, nullable=False, default="", server_default=""),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{name}_job", "job_id", "id"),
    )


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt (attempt 0: the event could not be queued)."""

    job_id: str
    delivery_id: str
    url: str
    event: str
    attempt: int
    status_code: int
    delivered: bool
    error: str
    time: dt.datetime


def to_proto(d: Delivery) -> common_pb2.WebhookDelivery:
    msg = common_pb2.WebhookDelivery(
        url=d.url,
        event=d.event,
        attempt=d.attempt,
        status_code=d.status_code,
        delivered=d.delivered,
        error=d.error,
    )
    msg.time.FromDatetime(d.time)
    return msg


async def deliveries(
    sessions: async_sessionmaker[AsyncSession],
    table: Table,
    job_ids: Iterable[str],
    per_job: int = 50,
) -> dict[str, list[Delivery]]:
    """The newest `per_job` attempts of each job, oldest first, by job id."""
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return {}
    t = table
    n = func.row_number().over(partition_by=t.c.job_id, order_by=t.c.id.desc()).label("n")
    inner = select(t, n).where(t.c.job_id.in_(ids)).subquery()
    query = select(inner).where(inner.c.n <= per_job).order_by(inner.c.job_id, inner.c.id)
    async with sessions() as s:
        rows = (await s.execute(query)).all()
    out: dict[str, list[Delivery]] = {}
    for r in rows:
        out.setdefault(r.job_id, []).append(
            Delivery(
                r.job_id,
                r.delivery_id,
                r.url,
                r.event,
                r.attempt,
                r.status_code,
                r.delivered,
                r.error,
                _utc(r.created_at),
            )
        )
    return out


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every time we store is UTC
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


async def record(sessions: async_sessionmaker[AsyncSession], table: Table, d: Delivery) -> None:
    values = asdict(d)
    values["created_at"] = values.pop("time")
    values["error"] = d.error[:MAX_ERROR_CHARS]
    async with db.transaction(sessions) as s:
        await s.execute(table.insert().values(**values))
