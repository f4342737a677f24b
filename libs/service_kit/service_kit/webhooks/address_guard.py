"""Hooks may not reach the platform's own network: a URL that resolves to a non-public address
is refused at each attempt, unless NEURAL_WEBHOOK_ALLOW_PRIVATE=1 (local development, tests)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
from urllib.parse import urlsplit

ALLOW_PRIVATE_ENV = "NEURAL_WEBHOOK_ALLOW_PRIVATE"


def private_allowed_by_env() -> bool:
    """Whether the environment lets hooks reach loopback and private addresses."""
    return os.environ.get(ALLOW_PRIVATE_ENV, "") == "1"


async def refusal(url: str) -> str:
    """Why `url` may not be called (it resolves to a loopback, private, link-local or
    reserved address, e.g. a cloud metadata endpoint), or "" when it may. A server-side
    request to an address the caller picked must not reach the platform's own network. The
    check is made at each attempt (not at submit time), which narrows DNS rebinding to the
    instant between this lookup and the connection."""
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0])
        if not ip.is_global or ip.is_multicast:
            return f"refused: {host} resolves to the non-public address {ip}"
    return ""
