"""Page sizes and page tokens of the service kit: a token comes back exactly as it was issued,
for the listing and the order it was issued for, or it is INVALID_ARGUMENT naming page_token."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator

import pytest
from service_kit import pagination
from service_kit.errors import InvalidArgument

pytestmark = pytest.mark.unit

FIELDS = (pagination.TIMESTAMP, pagination.TEXT)
SECRET = "s" * 40


@pytest.fixture(autouse=True)
def public_key() -> Iterator[None]:
    pagination.configure("")
    yield
    pagination.configure("")


def refused(token: str, listing: str = "t", fields=FIELDS, context=()) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as info:
        pagination.decode(token, listing, fields, context)
    assert [v.field for v in info.value.violations] == ["page_token"]
    assert "page_token" in info.value.message
    return info.value.violations[0].description


def test_page_sizes_default_cap_and_refuse_negatives() -> None:
    assert pagination.page_size(0) == pagination.DEFAULT_PAGE
    assert pagination.page_size(10**9) == pagination.MAX_PAGE
    assert pagination.page_size(0, 100, 1000) == 100
    assert pagination.page_size(7, 100, 5) == 5
    with pytest.raises(InvalidArgument) as info:
        pagination.page_size(-1)
    assert [v.field for v in info.value.violations] == ["page_size"]


def test_a_token_comes_back_typed() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    token = pagination.encode("t", (at.isoformat(), "id-1"), ("a", 1))
    assert pagination.decode(token, "t", FIELDS, ("a", 1)) == (at, "id-1")
    assert pagination.decode("", "t", FIELDS) is None
    offset = pagination.encode("o", (12,))
    assert pagination.decode(offset, "o", (pagination.OFFSET,)) == (12,)


def test_tampered_garbage_and_oversized_tokens_are_refused() -> None:
    token = pagination.encode("o", (12,))
    body, mac = token.split(".")
    flipped = body[:-1] + ("A" if body[-1] != "A" else "B")
    assert "altered" in refused(f"{flipped}.{mac}", "o", (pagination.OFFSET,))
    for garbage in ("garbage!", "a.b.c", ".", "x" * 5000, "é.é", "AAAA.AAAA", token + "x"):
        refused(garbage, "o", (pagination.OFFSET,))
    # The format the kit issued before: plain base64 JSON, which anyone could write.
    old = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "x"]).encode())
    refused(old.decode())


def test_a_token_of_another_listing_or_order_is_stale() -> None:
    token = pagination.encode("runs", (50,), ("metrics.loss < 1", ["name"]))
    assert "another listing" in refused(token, "models", (pagination.OFFSET,))
    assert "another filter or order" in refused(
        token, "runs", (pagination.OFFSET,), ("metrics.loss < 1", ["name DESC"])
    )
    assert pagination.decode(token, "runs", (pagination.OFFSET,), ("metrics.loss < 1", ["name"]))


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        (("not a date", "x"), FIELDS),
        (("2026-01-01T00:00:00", "x"), FIELDS),  # no offset: ambiguous
        (("0001-01-01T00:00:00+05:00", "x"), FIELDS),  # before year 1 in UTC
        ((12345, "x"), FIELDS),
        (("2026-01-01T00:00:00+00:00", 5), FIELDS),
        (("2026-01-01T00:00:00+00:00", "a\0b"), FIELDS),
        (("2026-01-01T00:00:00+00:00", "x" * 5000), FIELDS),
        ((10**30,), (pagination.OFFSET,)),
        ((-1,), (pagination.OFFSET,)),
        ((True,), (pagination.OFFSET,)),
        ((1.5,), (pagination.OFFSET,)),
        (([1],), (pagination.OFFSET,)),
        ((None,), (pagination.OFFSET,)),
        ((2**63,), (pagination.INT64,)),
        (
            ("sideways", 1, 0),
            (pagination.one_of("step", "sample"), pagination.INT64, pagination.OFFSET),
        ),
        ((1, 2), (pagination.OFFSET,)),  # one value too many
    ],
)
def test_forged_values_are_refused_even_with_a_valid_signature(values, fields) -> None:  # type: ignore[no-untyped-def]
    # Without a secret the key is public, so a caller can sign anything: strict parsing is
    # what keeps a forged value away from the database.
    refused(pagination.encode("t", values), "t", fields)


def test_the_key_follows_the_secret_and_survives_a_restart() -> None:
    unsigned = pagination.encode("o", (3,))
    pagination.configure(SECRET)
    signed = pagination.encode("o", (3,))
    assert signed != unsigned
    assert "altered" in refused(unsigned, "o", (pagination.OFFSET,))  # not under the secret
    pagination.configure(SECRET)  # a restarted process derives the same key
    assert pagination.decode(signed, "o", (pagination.OFFSET,)) == (3,)
    pagination.configure("another secret, as long as it must be..")
    refused(signed, "o", (pagination.OFFSET,))
