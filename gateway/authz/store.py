"""The API keys the authz service owns: hashed, shown once, found by prefix, expiring,
revocable, rotatable with an overlap window, optionally scoped to RPCs and to resources.

Checks are cached for at most `cache_seconds` (1 s by default): a revoked key stops working
everywhere within that, and at once in the process that revoked it."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service_kit import db, errors, pagination
from service_kit.auth import ROLES, Principal
from service_kit.roles import collections
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import api_keys

KEY_PREFIX = "nk_"
PREFIX_CHARS = 12  # "nk_" and 9 random characters: shown in listings, the lookup's index
MAX_OVERLAP = dt.timedelta(days=7)
LAST_USED_EVERY = dt.timedelta(minutes=1)  # how fresh last_used_at is kept, at most
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_authz"
LISTING = "authz_api_keys"  # what ListApiKeys' page tokens page through
MAX_LIMITS = 100  # scopes, and resources, of one key
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    prefix: str
    role: str
    owner: str
    created_by: str
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    scopes: tuple[str, ...]
    replaced_by: str | None
    last_used_at: dt.datetime | None = None
    resources: tuple[str, ...] = ()

    @classmethod
    def of(cls, row: Any) -> KeyRecord:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            role=row.role,
            owner=row.owner,
            created_by=row.created_by,
            created_at=_utc(row.created_at),  # type: ignore[arg-type]
            expires_at=_utc(row.expires_at),
            revoked_at=_utc(row.revoked_at),
            scopes=tuple(row.scopes.split()) if row.scopes else (),
            replaced_by=row.replaced_by,
            last_used_at=_utc(getattr(row, "last_used_at", None)),
            resources=tuple(row.resources.split()) if row.resources else (),
        )

    def usable(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class Grant:
    """What a credential allows: who it names (with the resources it is limited to), and the
    RPCs it is limited to (none: all)."""

    principal: Principal
    scopes: frozenset[str] = frozenset()

    def permits(self, rpc: str) -> bool:
        return not self.scopes or rpc in self.scopes


class KeyStore:
    def __init__(self, engine: AsyncEngine, cache_seconds: float = 1.0) -> None:
        self.engine = engine
        self.sessions = db.sessions(engine)
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Grant | None]] = {}
        self._usable: dict[str, tuple[float, bool]] = {}

    async def migrate(self) -> None:
        await db.migrate(self.engine, MIGRATIONS, VERSION_TABLE)

    async def prepare(self, migrate_at_start: bool) -> None:
        await db.prepare(self.engine, MIGRATIONS, VERSION_TABLE, migrate_at_start)

    def _forget(self) -> None:
        # A change (revocation, rotation) takes effect at once in this process.
        self._cache.clear()
        self._usable.clear()

    # ------------------------------------------------------------------ changes
    async def create(
        self,
        name: str,
        role: str,
        owner: str,
        created_by: str,
        expires_at: dt.datetime | None = None,
        scopes: tuple[str, ...] = (),
        resources: tuple[str, ...] = (),
    ) -> tuple[KeyRecord, str]:
        """A new key: its record and the plaintext, which is not stored anywhere."""
        _check(name, role, expires_at, scopes, resources)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        values = {
            "id": str(uuid.uuid4()),
            "name": name,
            "prefix": key[:PREFIX_CHARS],
            "key_hash": digest(key),
            "role": role,
            "owner": owner,
            "created_by": created_by,
            "created_at": dt.datetime.now(dt.UTC),
            "expires_at": expires_at,
            "revoked_at": None,
            "scopes": " ".join(scopes),
            "resources": " ".join(resources),
            "replaced_by": None,
        }
        async with db.transaction(self.sessions) as s:
            await s.execute(api_keys.insert().values(**values))
        return KeyRecord.of(_Row(values)), key

    async def revoke(self, key_id: str) -> KeyRecord | None:
        """Revoke a key (again is fine); None when there is no such key."""
        now = dt.datetime.now(dt.UTC)
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await s.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        self._forget()
        return KeyRecord.of(row) if row else None

    async def rotate(
        self, key_id: str, overlap: dt.timedelta, by: str
    ) -> tuple[KeyRecord, str] | None:
        """A new secret with the old key's name, role, owner, scopes and expiry; the old one
        keeps working for `overlap`, then expires. None when there is no such key."""
        if overlap < dt.timedelta(0) or overlap > MAX_OVERLAP:
            raise errors.InvalidArgument(
                f"overlap_seconds must be between 0 and {int(MAX_OVERLAP.total_seconds())}",
                [errors.FieldViolation("overlap_seconds", "out of range")],
            )
        now = dt.datetime.now(dt.UTC)
        async with db.transaction(self.sessions) as s:
            row = (
                await s.execute(select(api_keys).where(api_keys.c.id == key_id).with_for_update())
            ).first()
            if row is None:
                return None
            old = KeyRecord.of(row)
            if old.replaced_by:
                raise errors.FailedPrecondition(
                    f"key {key_id} was already rotated: rotate its successor {old.replaced_by}"
                )
            if not old.usable(now):
                raise errors.FailedPrecondition(f"key {key_id} is revoked or expired")
            key = KEY_PREFIX + secrets.token_urlsafe(32)
            values = {
                "id": str(uuid.uuid4()),
                "name": old.name,
                "prefix": key[:PREFIX_CHARS],
                "key_hash": digest(key),
                "role": old.role,
                "owner": old.owner,
                "created_by": by,
                "created_at": now,
                "expires_at": old.expires_at,
                "revoked_at": None,
                "scopes": " ".join(old.scopes),
                "resources": " ".join(old.resources),
                "replaced_by": None,
            }
            await s.execute(api_keys.insert().values(**values))
            end = now + overlap
            if old.expires_at is not None:
                end = min(end, old.expires_at)
            await s.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id)
                .values(expires_at=end, replaced_by=values["id"])
            )
        self._forget()
        return KeyRecord.of(_Row(values)), key

    # ------------------------------------------------------------------ reads
    async def get(self, key_id: str) -> KeyRecord | None:
        async with self.sessions() as s:
            row = (await s.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return KeyRecord.of(row) if row else None

    async def list(
        self, owner: str | None, include_revoked: bool, token: str = "", size: int = 0
    ) -> tuple[list[KeyRecord], str]:
        """One page of keys by creation (oldest first), `owner`'s only unless None, and the
        next page's token ("" at the end). The token is bound to the owner and
        include_revoked it was issued under: a token of another filter is refused."""
        query = select(api_keys)
        if owner is not None:
            query = query.where(api_keys.c.owner == owner)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        rows, next_token = await pagination.keyset_page(
            self.sessions,
            query,
            api_keys.c.created_at,
            api_keys.c.id,
            token,
            size,
            LISTING,
            (owner or "", include_revoked),
            newest_first=False,
        )
        return [KeyRecord.of(r) for r in rows], next_token

    async def authenticate(self, key: str) -> Grant | None:
        """What a plaintext API key allows, or None for an unknown, expired or revoked key."""
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        wanted = digest(key)
        async with self.sessions() as s:
            rows = (
                await s.execute(select(api_keys).where(api_keys.c.prefix == key[:PREFIX_CHARS]))
            ).all()
        grant = None
        at = dt.datetime.now(dt.UTC)
        for row in rows:
            if hmac.compare_digest(row.key_hash, wanted):
                record = KeyRecord.of(row)
                if record.usable(at):
                    principal = Principal(record.owner, record.role, record.id, record.resources)
                    grant = Grant(principal, frozenset(record.scopes))
                    if record.last_used_at is None or at - record.last_used_at > LAST_USED_EVERY:
                        await self._used(record.id, at)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (now, grant)
        return grant

    async def _used(self, key_id: str, at: dt.datetime) -> None:
        # At most once a minute per key: a write per call would make every check a commit.
        async with db.transaction(self.sessions) as s:
            await s.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    async def key_usable(self, key_id: str) -> bool:
        """Whether the key a token was issued from still works (tokens die with their key);
        cached like key checks, for at most `cache_seconds`."""
        now = time.monotonic()
        hit = self._usable.get(key_id)
        if hit is not None and now - hit[0] < self.cache_seconds:
            return hit[1]
        record = await self.get(key_id)
        usable = record is not None and record.usable(dt.datetime.now(dt.UTC))
        if len(self._usable) > 10_000:
            self._usable.clear()
        self._usable[key_id] = (now, usable)
        return usable


class _Row:
    """Inserted values read like a fetched row, so both become a KeyRecord the same way."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _check(
    name: str,
    role: str,
    expires_at: dt.datetime | None,
    scopes: tuple[str, ...],
    resources: tuple[str, ...],
) -> None:
    problems = []
    if not name.strip() or len(name) > 200:
        problems.append(errors.FieldViolation("name", "must be 1 to 200 characters"))
    if role not in ROLES:
        problems.append(errors.FieldViolation("role", f"must be one of {', '.join(ROLES)}"))
    if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
        problems.append(errors.FieldViolation("expire_time", "must be in the future"))
    for scope in scopes:
        if not scope.startswith("/neural.v1.") or "/" not in scope[1:] or " " in scope:
            problems.append(
                errors.FieldViolation(
                    "scopes", f"{scope[:100]!r} is not an RPC path like /neural.v1.X/Method"
                )
            )
            break
    kinds = collections()
    for resource in resources:
        kind, _, rid = resource.partition("/")
        if kind not in kinds or not _RESOURCE_ID.match(rid):
            problems.append(
                errors.FieldViolation(
                    "resources",
                    f"{resource[:100]!r} is not a resource like runs/<id> "
                    f"(one of {', '.join(sorted(kinds))})",
                )
            )
            break
    if len(scopes) > MAX_LIMITS or len(resources) > MAX_LIMITS:
        field = "scopes" if len(scopes) > MAX_LIMITS else "resources"
        problems.append(errors.FieldViolation(field, f"at most {MAX_LIMITS}"))
    if problems:
        raise errors.InvalidArgument(
            "; ".join(f"{p.field}: {p.description}" for p in problems), problems
        )
