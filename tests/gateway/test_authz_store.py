"""The authz service's API keys on PostgreSQL and SQLite: hashed and shown once, found by
prefix, expiring, revoked within a second everywhere, rotated with an overlap, scoped; and the
audit log."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator

import pytest
from service_kit import db, errors
from sqlalchemy import select

from gateway.authz.audit import AuditLog
from gateway.authz.store import KeyStore, digest
from gateway.authz.tables import api_keys
from tests.services.conftest import db_url  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[KeyStore]:  # noqa: F811
    engine = db.make_engine(db_url)
    keys = KeyStore(engine)
    await keys.migrate()
    try:
        yield keys
    finally:
        await engine.dispose()


async def test_a_key_is_stored_hashed_and_found_by_its_prefix(store: KeyStore) -> None:
    record, key = await store.create("ci", "user", "alice", "admin")
    assert key.startswith("nk_") and record.prefix == key[:12]
    async with store.sessions() as s:
        row = (await s.execute(select(api_keys))).one()
    assert row.key_hash == digest(key) and key not in str(tuple(row))
    grant = await store.authenticate(key)
    assert grant is not None
    assert (grant.principal.subject, grant.principal.role, grant.principal.key_id) == (
        "alice",
        "user",
        record.id,
    )
    # its use is noted, at most once a minute (not a write per call)
    used = (await store.get(record.id)).last_used_at  # type: ignore[union-attr]
    assert used is not None and record.last_used_at is None
    store.cache_seconds = 0
    assert await store.authenticate(key) is not None
    assert (await store.get(record.id)).last_used_at == used  # type: ignore[union-attr]
    # the same prefix with another secret is not the key
    assert await store.authenticate(key[:12] + "x" * 40) is None
    assert await store.authenticate("nk_unknown") is None
    assert await store.authenticate("not-a-key") is None


async def test_revocation_is_effective_within_a_second_everywhere(
    store: KeyStore,
    db_url: str,  # noqa: F811
) -> None:
    _, key = await store.create("ci", "user", "alice", "admin")
    # another replica of the authz service, with its own cache
    other = KeyStore(db.make_engine(db_url))
    try:
        assert await other.authenticate(key) is not None
        record = (await store.list(None, False, size=10))[0][0]
        revoked = await store.revoke(record.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert await store.authenticate(key) is None  # at once where it was revoked
        started = time.monotonic()
        while await other.authenticate(key) is not None:
            assert time.monotonic() - started < 1.5, "still accepted after a second"
        assert await store.revoke("no-such-id") is None
        assert (await store.list(None, False, size=10))[0] == []
        assert len((await store.list(None, True, size=10))[0]) == 1
    finally:
        await other.engine.dispose()


async def test_an_expired_key_is_refused(store: KeyStore) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    _, key = await store.create("short", "viewer", "bob", "admin", soon)
    assert await store.authenticate(key) is not None
    store.cache_seconds = 0
    started = time.monotonic()
    while await store.authenticate(key) is not None:
        assert time.monotonic() - started < 3
    with pytest.raises(errors.InvalidArgument, match="expire_time"):
        await store.create("past", "viewer", "bob", "admin", dt.datetime.now(dt.UTC))


async def test_rotation_keeps_the_old_secret_for_the_overlap_only(store: KeyStore) -> None:
    old, old_key = await store.create("ci", "user", "alice", "admin", scopes=("/neural.v1.A/B",))
    rotated = await store.rotate(old.id, dt.timedelta(seconds=1), "alice")
    assert rotated is not None
    new, new_key = rotated
    assert (new.name, new.role, new.owner, new.scopes) == ("ci", "user", "alice", old.scopes)
    store.cache_seconds = 0
    assert (await store.authenticate(old_key)) is not None  # inside the overlap
    assert (await store.authenticate(new_key)).principal.key_id == new.id  # type: ignore[union-attr]
    started = time.monotonic()
    while await store.authenticate(old_key) is not None:
        assert time.monotonic() - started < 3, "the old secret outlived its overlap"
    assert await store.authenticate(new_key) is not None
    with pytest.raises(errors.FailedPrecondition, match="already rotated"):
        await store.rotate(old.id, dt.timedelta(0), "alice")
    with pytest.raises(errors.InvalidArgument, match="overlap_seconds"):
        await store.rotate(new.id, dt.timedelta(days=30), "alice")
    assert await store.rotate("no-such-id", dt.timedelta(0), "alice") is None
    # an overlap of 0 ends the old secret at once
    _, newer_key = await store.rotate(new.id, dt.timedelta(0), "alice")  # type: ignore[misc]
    assert await store.authenticate(new_key) is None
    assert await store.authenticate(newer_key) is not None


async def test_scopes_limit_a_key_to_its_rpcs(store: KeyStore) -> None:
    validate = "/neural.v1.CompilerService/Validate"
    _, key = await store.create("predict-only", "user", "carol", "admin", scopes=(validate,))
    grant = await store.authenticate(key)
    assert grant is not None
    assert grant.permits(validate)
    assert not grant.permits("/neural.v1.CompilerService/Compile")
    with pytest.raises(errors.InvalidArgument, match="scopes"):
        await store.create("bad", "user", "carol", "admin", scopes=("Compile",))
    with pytest.raises(errors.InvalidArgument, match="role"):
        await store.create("bad", "root", "carol", "admin")


async def test_keys_list_by_owner_in_pages(store: KeyStore) -> None:
    for i in range(5):
        await store.create(f"k{i}", "user", "alice" if i % 2 else "bob", "admin")
    everyone, _ = await store.list(None, False, size=100)
    assert len(everyone) == 5
    assert {r.owner for r in (await store.list("alice", False, size=100))[0]} == {"alice"}
    first, token = await store.list(None, False, size=2)
    rest, _ = await store.list(None, False, token, 100)
    assert [r.id for r in first + rest] == [r.id for r in everyone]


async def test_the_audit_log_keeps_decisions_newest_first(store: KeyStore) -> None:
    audit = AuditLog(store.engine)
    audit.record("alice", "POST /v1/models:compile", True, target="key-1")
    audit.record("", "GET /v1/models", False, "missing credentials")
    await audit.close()
    events, _ = await audit.list(None, size=10)
    assert [(e.subject, e.allowed, e.reason) for e in events] == [
        ("", False, "missing credentials"),
        ("alice", True, ""),
    ]
    assert [e.action for e in (await audit.list("alice", size=10))[0]] == [
        "POST /v1/models:compile"
    ]
    _, token = await audit.list(None, size=1)
    older, _ = await audit.list(None, token, 10)
    assert [e.id for e in older] == [events[1].id]
