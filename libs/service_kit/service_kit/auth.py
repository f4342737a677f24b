"""Authentication: API keys (stored hashed, shown once) and short-lived JWTs.

A caller sends `authorization: Bearer <api key or JWT>` (or `x-api-key: <key>`). Keys are
random 256-bit tokens, so a SHA-256 digest is enough to store them safely; a JWT is signed
with NEURAL_JWT_SECRET (HS256) and carries the subject and role.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from sqlalchemy import Boolean, Column, DateTime, MetaData, String, Table, false, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from . import db

ROLES = ("viewer", "user", "admin")  # each includes the ones before it
KEY_PREFIX = "nk_"

metadata = MetaData()
api_keys = Table(
    "auth_api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked", Boolean, nullable=False, default=False, server_default=false()),
)

MIGRATIONS = Path(__file__).parent / "auth_migrations"
VERSION_TABLE = "alembic_version_auth"


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    key_id: str = ""

    def allows(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AuthStore:
    """API keys in the database, with a short cache so a hot key costs no query per call;
    short enough (1 s) that a revoked key stops working everywhere within a second."""

    def __init__(self, engine: AsyncEngine, jwt_secret: str = "", cache_seconds: float = 1.0):
        self.engine = engine
        self.sessions = db.sessions(engine)
        self.jwt_secret = jwt_secret
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def migrate(self) -> None:
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    async def create_key(
        self, name: str, role: str, owner: str, ttl: dt.timedelta | None = None
    ) -> tuple[str, str]:
        """A new key: returns (key id, plaintext key). The plaintext is not stored."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = str(uuid.uuid4())
        now = dt.datetime.now(dt.UTC)
        async with db.transaction(self.sessions) as s:
            await s.execute(
                api_keys.insert().values(
                    id=key_id,
                    name=name,
                    prefix=key[:10],
                    key_hash=_digest(key),
                    role=role,
                    owner=owner,
                    created_at=now,
                    expires_at=now + ttl if ttl else None,
                    revoked=False,
                )
            )
        return key_id, key

    async def revoke(self, key_id: str) -> bool:
        async with db.transaction(self.sessions) as s:
            result = await s.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked=True)
            )
        self._cache.clear()
        return bool(result.rowcount)

    async def verify(self, credential: str) -> Principal | None:
        if not credential.startswith(KEY_PREFIX):
            return self._verify_jwt(credential)
        now = time.monotonic()
        hit = self._cache.get(credential)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        digest = _digest(credential)
        async with self.sessions() as s:
            row = (await s.execute(select(api_keys).where(api_keys.c.key_hash == digest))).first()
        principal = None
        if row is not None and hmac.compare_digest(row.key_hash, digest) and not row.revoked:
            expires = row.expires_at
            if expires is not None and expires.tzinfo is None:
                expires = expires.replace(tzinfo=dt.UTC)
            if expires is None or expires > dt.datetime.now(dt.UTC):
                principal = Principal(row.owner, row.role, row.id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[credential] = (now, principal)
        return principal

    def issue_jwt(self, principal: Principal, seconds: int = 3600) -> str:
        if not self.jwt_secret:
            raise ValueError("NEURAL_JWT_SECRET is not set: tokens cannot be issued")
        now = int(time.time())
        claims = {
            "sub": principal.subject,
            "role": principal.role,
            "kid": principal.key_id,
            "iat": now,
            "exp": now + seconds,
        }
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def _verify_jwt(self, token: str) -> Principal | None:
        if not self.jwt_secret:
            return None
        try:
            claims = jwt.decode(
                token, self.jwt_secret, algorithms=["HS256"], options={"require": ["exp", "sub"]}
            )
        except jwt.PyJWTError:
            return None
        role = claims.get("role")
        if role not in ROLES:
            return None
        return Principal(str(claims["sub"]), role, str(claims.get("kid", "")))
