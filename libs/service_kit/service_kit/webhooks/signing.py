"""What proves a delivery came from us: the headers of a POST and its HMAC-SHA256 signature.

A receiver checks `X-Neural-Signature: sha256=<hex>` against the raw body with `verify`."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Neural-Signature"
EVENT_HEADER = "X-Neural-Event"
DELIVERY_HEADER = "X-Neural-Delivery"


def sign(secret: str, body: bytes) -> str:
    """The hex HMAC-SHA256 of `body` keyed by `secret`."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when `header` (the X-Neural-Signature value) signs `body` with `secret`."""
    scheme, _, digest = header.partition("=")
    return scheme == "sha256" and hmac.compare_digest(digest, sign(secret, body))


def headers(secret: str, body: bytes, event: str, delivery_id: str) -> dict[str, str]:
    """The headers of one delivery's POST, the signature of `body` among them."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "neural-webhooks/1",
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: f"sha256={sign(secret, body)}",
    }
