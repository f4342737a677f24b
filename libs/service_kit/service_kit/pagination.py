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
