"""Page sizes and page tokens for every List/Search RPC.

A token is opaque to the caller and checked on the way back in, so a forged, altered, stale or
garbage token is INVALID_ARGUMENT naming `page_token`, never a query that fails in the
database. It is `<payload>.<mac>`, both base64url: the payload is the JSON list
`[version, listing, context digest, *values]` and the mac an HMAC-SHA256 of it.

- The listing names what the token pages through (a table, a run's metric history): a token
  of one listing is refused by another.
- The context digest binds the token to what fixes the order of that listing (a filter, a sort,
  a directory): an offset means nothing under another order, so such a token is refused.
- Every value is parsed strictly by the field type its listing declares (integers in range,
  tz-aware ISO timestamps, bounded text): what reaches a query always has the type and range
  the column expects.

The MAC key is derived from `NEURAL_PAGE_TOKEN_SECRET` when the service has one (`configure`, called
at start), so tokens stay valid across restarts and replicas of the service and cannot be made
by a caller. Without a secret the key is a fixed, public one: tokens still detect corruption
and truncation, and strict parsing alone keeps every forged value harmless.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import FieldViolation, InvalidArgument

DEFAULT_PAGE = 50
MAX_PAGE = 1000
MAX_TOKEN_CHARS = 2048
MAX_OFFSET = 1 << 62  # any larger offset is past every table, and overflows bigint arithmetic
MAX_TEXT = 1000
VERSION = 1
_PUBLIC_KEY = hashlib.sha256(b"neural page tokens: no secret configured").digest()
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")

_key = _PUBLIC_KEY

# A field type: a raw JSON value in, the typed value out, or ValueError.
Field = Callable[[Any], Any]


def configure(secret: str) -> None:
    """Sign tokens with a key derived from the service's secret (none: the public key)."""
    global _key
    _key = (
        hmac.new(secret.encode(), b"neural page tokens v1", hashlib.sha256).digest()
        if secret
        else _PUBLIC_KEY
    )


def page_size(requested: int, default: int = DEFAULT_PAGE, maximum: int = MAX_PAGE) -> int:
    """The page size to use: `default` for 0, at most `maximum`; negative is refused."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size must not be negative, got {requested}",
            [FieldViolation("page_size", "must be >= 0")],
        )
    return min(requested or default, maximum)


# ------------------------------------------------------------------ field types
def integer(low: int, high: int) -> Field:
    """A field that holds an integer in [low, high] (not a bool, not a float)."""

    def parse(value: Any) -> int:
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"an integer in [{low}, {high}] expected")
        return value

    return parse


def _text(value: Any) -> str:
    if type(value) is not str or len(value) > MAX_TEXT or "\0" in value:
        raise ValueError("text expected")
    return value


def _timestamp(value: Any) -> dt.datetime:
    if type(value) is not str or len(value) > 40:
        raise ValueError("a timestamp expected")
    at = dt.datetime.fromisoformat(value)
    if at.tzinfo is None:
        raise ValueError("a timestamp with its offset expected")
    try:
        return at.astimezone(dt.UTC)
    except OverflowError:  # year 1 or 9999 moved past the calendar's ends
        raise ValueError("a timestamp in range expected") from None


OFFSET = integer(0, MAX_OFFSET)  # a row offset
INT64 = integer(-(1 << 63), (1 << 63) - 1)  # any value of a signed 64-bit column
TEXT: Field = _text  # a key column's text: bounded, without NUL (PostgreSQL refuses it)
TIMESTAMP: Field = _timestamp  # a tz-aware ISO 8601 timestamp, as UTC


def one_of(*choices: str) -> Field:
    """A field that holds one of `choices`."""

    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"one of {choices} expected")
        return str(value)

    return parse


# ------------------------------------------------------------------ tokens
def _invalid(reason: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token {reason}: pass the next_page_token of the previous page unchanged, or "
        "none for the first page",
        [FieldViolation("page_token", reason)],
    )


def _digest(context: Sequence[Any]) -> str:
    blob = json.dumps(list(context), separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not _B64.match(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(payload: bytes) -> bytes:
    return hmac.new(_key, payload, hashlib.sha256).digest()[:16]


def encode(listing: str, values: Sequence[Any], context: Sequence[Any] = ()) -> str:
    """The token of the page that starts after `values` in `listing` under `context`."""
    payload = json.dumps(
        [VERSION, listing, _digest(context), *values], separators=(",", ":"), default=str
    ).encode()
    return f"{_b64(payload)}.{_b64(_mac(payload))}"


def decode(
    token: str, listing: str, fields: Sequence[Field], context: Sequence[Any] = ()
) -> tuple[Any, ...] | None:
    """The typed values of a token `encode(listing, ..., context)` made; None for no token.
    Anything else is INVALID_ARGUMENT naming page_token."""
    if not token:
        return None
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise _invalid("is not one this server issued")
    body, mac = token.split(".")
    try:
        payload, given = _unb64(body), _unb64(mac)
    except (ValueError, binascii.Error):
        raise _invalid("is not one this server issued") from None
    if not hmac.compare_digest(given, _mac(payload)):
        raise _invalid("was not issued by this service or was altered")
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("is not one this server issued") from None
    if not isinstance(value, list) or len(value) < 3 or value[0] != VERSION:
        raise _invalid("is not one this server issued")
    if value[1] != listing:
        raise _invalid("belongs to another listing")
    if value[2] != _digest(context):
        raise _invalid("belongs to a listing with another filter or order")
    if len(value) != 3 + len(fields):
        raise _invalid("is not one this server issued")
    try:
        return tuple(parse(v) for parse, v in zip(fields, value[3:], strict=True))
    except ValueError:
        raise _invalid("holds a value of the wrong type") from None


# ------------------------------------------------------------------ keyset pages
async def keyset_page(
    sessions: Any,
    query: Any,
    at_column: Any,
    id_column: Any,
    token: str,
    size: int,
    listing: str,
    context: Sequence[Any] = (),
    newest_first: bool = True,
) -> tuple[list[Any], str]:
    """One page of `query` ordered by (`at_column`, `id_column`), newest first or oldest
    first, and the token of the next page ("" at the end). Keyset pagination: stable under
    inserts. The token belongs to `listing` and to `context` (the filters the caller wants a
    token bound to: one issued under other values of them is refused); filters left out of
    `context` may change between pages, since the order does not."""
    from sqlalchemy import and_, or_

    n = page_size(size)
    key = decode(token, listing, (TIMESTAMP, TEXT), context)
    if key is not None:
        at, last_id = key
        if newest_first:
            past = or_(at_column < at, and_(at_column == at, id_column < last_id))
        else:
            past = or_(at_column > at, and_(at_column == at, id_column > last_id))
        query = query.where(past)
    order = (at_column.desc(), id_column.desc()) if newest_first else (at_column, id_column)
    query = query.order_by(*order).limit(n + 1)
    async with sessions() as s:
        rows = (await s.execute(query)).all()
    page = list(rows[:n])
    if len(rows) <= n:
        return page, ""
    last = page[-1]._mapping
    at_value = last[at_column]
    if at_value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        at_value = at_value.replace(tzinfo=dt.UTC)
    return page, encode(listing, (at_value.isoformat(), last[id_column]), context)


async def newest_first(
    sessions: Any, table: Any, query: Any, token: str, size: int, listing: str = ""
) -> tuple[list[Any], str]:
    """`keyset_page` over `table`'s (created_at, id), newest first, with no context: filters
    may change between pages. The token belongs to `listing` (the table's name by default; a
    caller that lists several kinds of row of one table names each)."""
    return await keyset_page(
        sessions, query, table.c.created_at, table.c.id, token, size, listing or table.name
    )
