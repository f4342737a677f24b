"""The hooks of a request checked, and the events a hook may subscribe to."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..errors import FieldViolation, InvalidArgument

EVENTS = ("started", "progress", "completed", "failed", "cancelled")
MAX_HOOKS = 10
MAX_URL_CHARS = 2048
MIN_SECRET_CHARS, MAX_SECRET_CHARS = 16, 256


def validate(hooks: Sequence[Any], field: str = "webhooks") -> list[dict[str, Any]]:
    """Webhook messages (url, secret, events) -> the dicts a job's request stores.

    Raises InvalidArgument with one violation per problem."""
    violations: list[FieldViolation] = []
    if len(hooks) > MAX_HOOKS:
        violations.append(FieldViolation(field, f"at most {MAX_HOOKS} webhooks"))
    out = []
    for i, hook in enumerate(hooks[:MAX_HOOKS]):
        where = f"{field}[{i}]"
        problem = _url_problem(hook.url)
        if problem:
            violations.append(FieldViolation(f"{where}.url", problem))
        if not MIN_SECRET_CHARS <= len(hook.secret) <= MAX_SECRET_CHARS:
            violations.append(
                FieldViolation(
                    f"{where}.secret",
                    f"required: {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters",
                )
            )
        unknown = sorted(set(hook.events) - set(EVENTS))
        if unknown:
            violations.append(
                FieldViolation(
                    f"{where}.events",
                    f"unknown {', '.join(map(repr, unknown))}; known: {', '.join(EVENTS)}",
                )
            )
        events = [e for e in EVENTS if e in set(hook.events)]
        out.append({"url": hook.url, "secret": hook.secret, "events": events})
    if violations:
        raise InvalidArgument("invalid webhooks", violations)
    return out


def _url_problem(url: str) -> str:
    if not url:
        return "required"
    if len(url) > MAX_URL_CHARS:
        return f"at most {MAX_URL_CHARS} characters"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        # deliveries show their URL: credentials belong in the secret, not the URL
        return "must not contain credentials"
    return ""


def subscribed(hook: Mapping[str, Any], event: str) -> bool:
    """Whether a stored hook wants `event` (a hook that names no events wants them all)."""
    return event in (hook.get("events") or EVENTS)
