"""Opaque page tokens for keyset pagination (newest first, then id)."""

from __future__ import annotations

import base64
import json
from typing import Any

from .errors import FieldViolation, InvalidArgument

DEFAULT_PAGE = 50
MAX_PAGE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            "page_size must not be negative", [FieldViolation("page_size", "must be >= 0")]
        )
    return min(requested or DEFAULT_PAGE, MAX_PAGE)


def encode(key: tuple[Any, ...]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, default=str).encode()).decode()


def decode(token: str) -> tuple[Any, ...] | None:
    if not token:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "page_token is not one this server issued", [FieldViolation("page_token", "malformed")]
        ) from None
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidArgument(
            "page_token is not one this server issued", [FieldViolation("page_token", "malformed")]
        )
    return tuple(value)


async def newest_first(
    sessions: Any, table: Any, query: Any, token: str, size: int
) -> tuple[list[Any], str]:
    """One page of `query` over `table` (which has created_at and id), newest first, and the
    token of the next page ("" at the end). Keyset pagination: stable under inserts."""
    import datetime as dt

    from sqlalchemy import and_, or_

    key = decode(token)
    if key is not None:
        try:
            at = dt.datetime.fromisoformat(str(key[0]))
        except ValueError:
            raise InvalidArgument(
                "page_token is not one this server issued",
                [FieldViolation("page_token", "malformed")],
            ) from None
        query = query.where(
            or_(table.c.created_at < at, and_(table.c.created_at == at, table.c.id < key[1]))
        )
    n = page_size(size)
    query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(n + 1)
    async with sessions() as s:
        rows = (await s.execute(query)).all()
    page = list(rows[:n])
    if len(rows) <= n:
        return page, ""
    last = page[-1]
    created = last.created_at if last.created_at.tzinfo else last.created_at.replace(tzinfo=dt.UTC)
    return page, encode((created.isoformat(), last.id))
