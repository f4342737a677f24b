"""Acting for someone else: a worker's internal tokens for a job's owner, issued by authz.

A worker calls other services as the job's owner (the trainer logs a job's run into the
owner's experiment). It holds no signing secret: it has an API key of its own, an admin key
scoped to `AuthService.IssueDelegatedToken` alone (NEURAL_SERVICE_KEY_FILE), and asks the
authz service for a short-lived internal token naming the owner. Revoking that key stops
the worker at once; each token lives a minute at most.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from neural.v1 import auth_pb2, auth_pb2_grpc

from .internal_token import HEADER

ROLE = {"viewer": auth_pb2.ROLE_VIEWER, "user": auth_pb2.ROLE_USER, "admin": auth_pb2.ROLE_ADMIN}


class OwnerTokens:
    """Tokens naming a subject, each reused until half its life is gone."""

    def __init__(self, authz_address: str, key_file: Path | str, timeout: float = 10.0) -> None:
        if not key_file:
            raise RuntimeError(
                "NEURAL_SERVICE_KEY_FILE is not set: the worker has no key to ask the authz "
                "service for tokens with (an admin key scoped to "
                "/neural.v1.AuthService/IssueDelegatedToken)"
            )
        self.address = authz_address
        self.key_file = Path(key_file)
        self.timeout = timeout
        self._tokens: dict[tuple[str, str], tuple[float, str]] = {}

    def _key(self) -> str:
        # Read at each request, so a rotated key file is picked up without a restart.
        return self.key_file.read_text().strip()

    async def token(self, subject: str, role: str = "user") -> str:
        hit = self._tokens.get((subject, role))
        if hit is not None and time.monotonic() < hit[0]:
            return hit[1]
        # A channel per request: workers run jobs on event loops of their own, and a token is
        # asked for at most every half minute per owner.
        async with grpc.aio.insecure_channel(self.address) as channel:
            reply = await auth_pb2_grpc.AuthServiceStub(channel).IssueDelegatedToken(
                auth_pb2.IssueDelegatedTokenRequest(subject=subject, role=ROLE[role]),
                metadata=(("authorization", f"Bearer {await asyncio.to_thread(self._key)}"),),
                timeout=self.timeout,
            )
        refresh_at = time.monotonic() + reply.expires_in / 2
        self._tokens[(subject, role)] = (refresh_at, reply.access_token)
        return reply.access_token

    async def metadata(self, subject: str, role: str = "user") -> tuple[tuple[str, str], ...]:
        """The call metadata that makes a service see `subject` as the caller."""
        return ((HEADER, await self.token(subject, role)),)


__all__ = ["OwnerTokens"]
