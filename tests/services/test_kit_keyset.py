"""The kit's keyset pages (`pagination.keyset_page`): either order over any (timestamp, id)
pair of columns, every row once across pages, and the token bound to its listing and context."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from service_kit import db, pagination
from service_kit.errors import InvalidArgument
from sqlalchemy import Column, DateTime, MetaData, String, Table, select

pytestmark = pytest.mark.integration

meta = MetaData()
events = Table(
    "events",
    meta,
    Column("id", String, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String, nullable=False),
)
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
# Two rows share a timestamp, so the id must break the tie.
ROWS = [
    {"id": "a", "at": T0, "kind": "x"},
    {"id": "b", "at": T0 + dt.timedelta(seconds=1), "kind": "y"},
    {"id": "c", "at": T0 + dt.timedelta(seconds=1), "kind": "x"},
    {"id": "d", "at": T0 + dt.timedelta(seconds=2), "kind": "x"},
    {"id": "e", "at": T0 + dt.timedelta(seconds=3), "kind": "y"},
]


@pytest.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Any]:
    pagination.configure("")
    engine = db.make_engine(f"sqlite+aiosqlite:///{tmp_path / 'keyset.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(meta.create_all)
        await conn.execute(events.insert(), ROWS)
    yield db.sessions(engine)
    await engine.dispose()


async def every_page(
    sessions: Any, kind: str | None, newest_first: bool, size: int = 2
) -> tuple[list[str], list[str]]:
    """The ids of every page in order, and the tokens that led to them."""
    query = select(events) if kind is None else select(events).where(events.c.kind == kind)
    ids: list[str] = []
    tokens: list[str] = []
    token = ""
    while True:
        rows, token = await pagination.keyset_page(
            sessions,
            query,
            events.c.at,
            events.c.id,
            token,
            size,
            "events",
            (kind or "",),
            newest_first=newest_first,
        )
        assert len(rows) <= size
        ids += [r.id for r in rows]
        if not token:
            return ids, tokens
        tokens.append(token)


async def test_pages_run_either_way_and_hold_every_row_once(sessions: Any) -> None:
    assert (await every_page(sessions, None, newest_first=True))[0] == ["e", "d", "c", "b", "a"]
    assert (await every_page(sessions, None, newest_first=False))[0] == ["a", "b", "c", "d", "e"]
    assert (await every_page(sessions, "x", newest_first=False, size=1))[0] == ["a", "c", "d"]


async def test_a_token_is_bound_to_its_context_and_listing(sessions: Any) -> None:
    _, tokens = await every_page(sessions, "x", newest_first=True, size=1)
    query = select(events)
    for context, listing in ((("y",), "events"), (("x",), "other")):
        with pytest.raises(InvalidArgument) as info:
            await pagination.keyset_page(
                sessions, query, events.c.at, events.c.id, tokens[0], 1, listing, context
            )
        assert [v.field for v in info.value.violations] == ["page_token"]
