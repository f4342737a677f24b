"""What every part of the tracker's store shares: the clock rows are stamped by, and the limits
on one call's keys and entries."""

from __future__ import annotations

import datetime as dt

from service_kit.errors import FieldViolation, InvalidArgument

MAX_ENTRIES = 1000  # params, tags, keys or ids named in one call
MAX_KEY = 250
MAX_VALUE = 6000


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def now_ms() -> int:
    return int(now().timestamp() * 1000)


def check_key(name: str, what: str) -> None:
    if not name or len(name) > MAX_KEY or name != name.strip():
        raise InvalidArgument(
            f"{what} key {name[:50]!r} must be 1-{MAX_KEY} characters without surrounding spaces",
            [FieldViolation(what, "bad key")],
        )


def at_most(count: int, field: str, limit: int = MAX_ENTRIES) -> None:
    """One call's entries stay far below what one statement can bind (32767 values on
    PostgreSQL): more is the caller's mistake, not a database outage."""
    if count > limit:
        raise InvalidArgument(
            f"at most {limit} {field} per call, got {count}: send them in several calls",
            [FieldViolation(field, f"at most {limit}")],
        )
