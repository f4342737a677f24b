"""The services' asyncio Redis clients, made one way.

After Redis restarts, a pooled connection the server closed fails its next command with
ConnectionError, and redis-py 8 retries only the errors it is told to: the service's first
call after the restart answered UNAVAILABLE. Such a command never reached the server, so it is
sent once more at once on a new connection. Timeouts are not retried (the command may have
run), and a Redis that is down still fails fast: one more refused connect, no back-off."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def async_client(url: str, **options: Any) -> aioredis.Redis:
    """`redis.asyncio.from_url(url, **options)` that survives a Redis restart (see above)."""
    return aioredis.from_url(
        url, retry=Retry(NoBackoff(), 1), retry_on_error=[RedisConnectionError], **options
    )
