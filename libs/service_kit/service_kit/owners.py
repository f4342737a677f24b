"""Owner scoping, the one rule for every service's rows: admins see everything; any other
principal sees only the rows it owns, and another owner's row is NOT_FOUND (never revealed as
existing).

A scope is the owner a caller is limited to, or None for an admin. Handlers take it from the
caller with `scope()`; stores apply it with `visible` (one row) and `restrict` (a query)."""

from __future__ import annotations

from typing import Any, TypeVar

from .interceptors import principal

ADMIN = "admin"

Query = TypeVar("Query")


def scope() -> str | None:
    """The owner the caller of the RPC in flight is limited to; None for an admin."""
    who = principal()
    return None if who.role == ADMIN else who.subject


def visible(row_owner: str, owner: str | None) -> bool:
    """Whether a row owned by `row_owner` is visible in scope `owner`."""
    return owner is None or row_owner == owner


def restrict(query: Query, column: Any, owner: str | None) -> Query:
    """`query` limited to the rows of scope `owner` (unchanged for an admin)."""
    return query if owner is None else query.where(column == owner)  # type: ignore[attr-defined]
