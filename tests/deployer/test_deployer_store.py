"""The deployer's store on PostgreSQL and SQLite: its migrations match its tables, names are
unique, owners see only their own, pages are stable, the controller's writes round-trip."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from service_kit import db, errors
from sqlalchemy import update

from services.deployer import app, tables
from services.deployer.store import (
    DELETING,
    FAILED,
    R_READY,
    R_STARTING,
    READY,
    STALE_SECONDS,
    DeployerStore,
    Replica,
    new_id,
    now,
)
from tests.services.conftest import db_url  # noqa: F401 (the fixture)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[DeployerStore]:  # noqa: F811
    engine = db.make_engine(db_url)
    await db.migrate(engine, app.MIGRATIONS, app.VERSION_TABLE)
    s = DeployerStore(engine)
    try:
        yield s
    finally:
        await s.close()


def columns(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": new_id(),
        "name": name,
        "owner": extra.pop("owner", "alice"),
        "runtime": "onnx",
        "replicas": 1,
        "min_replicas": 0,
        "max_replicas": 0,
        "max_batch_size": 0,
        "max_batch_delay_us": 0,
        "cpu": "",
        "memory": "",
        "gpu": 0,
        **extra,
    }


def version(**extra: Any) -> dict[str, Any]:
    return {
        "id": new_id(),
        "version": "v1",
        "run_id": "run1",
        "artifact_path": "model.onnx",
        "model_id": "",
        "model_path": "/tmp/model.onnx",
        "traffic_percent": 100,
        **extra,
    }


async def test_migrations_build_the_declared_tables(db_url: str) -> None:  # noqa: F811
    engine = db.make_engine(db_url)
    try:
        await db.migrate(engine, app.MIGRATIONS, app.VERSION_TABLE)
        await db.migrate(engine, app.MIGRATIONS, app.VERSION_TABLE)  # idempotent

        def diff(conn: Any) -> list[Any]:
            def ours(name: str | None, type_: str, _: Any) -> bool:
                return type_ != "table" or name in tables.metadata.tables

            def same_empty_default(*args: Any) -> bool | None:
                inspected, rendered = args[3], args[5]
                if rendered == "" and (inspected or "").strip("()") == "''":
                    return False
                return None

            ctx = MigrationContext.configure(
                conn,
                opts={
                    "include_name": ours,
                    "compare_type": True,
                    "compare_server_default": same_empty_default,
                },
            )
            return compare_metadata(ctx, tables.metadata)

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_create_get_and_unique_names(store: DeployerStore) -> None:
    created = await store.create(columns("iris"), version())
    assert created.state == "PENDING" and created.owner == "alice"
    assert [v.version for v in created.versions] == ["v1"]
    assert created.versions[0].state == "PENDING"
    assert created.created_at.tzinfo is not None
    assert await store.name_taken("iris")
    with pytest.raises(errors.AlreadyExists):
        await store.create(columns("iris", owner="bob"), version())
    got = await store.get(created.id, "alice")
    assert got.name == "iris" and got.versions[0].run_id == "run1"
    assert (await store.get("iris", "alice")).id == created.id  # by name too
    with pytest.raises(errors.NotFound):
        await store.get("iris", "bob")


async def test_owners_see_only_their_own(store: DeployerStore) -> None:
    mine = await store.create(columns("mine"), version())
    theirs = await store.create(columns("theirs", owner="bob"), version())
    with pytest.raises(errors.NotFound):
        await store.get(theirs.id, "alice")
    with pytest.raises(errors.NotFound):
        await store.scale(theirs.id, "alice", 3)
    with pytest.raises(errors.NotFound):
        await store.mark_deleting(theirs.id, "alice")
    assert (await store.get(theirs.id, None)).owner == "bob"  # an admin sees all
    listed, _ = await store.list("alice", None, "", 0)
    assert [d.id for d in listed] == [mine.id]
    everyone, _ = await store.list(None, None, "", 0)
    assert {d.id for d in everyone} == {mine.id, theirs.id}


async def test_pages_are_newest_first_and_complete(store: DeployerStore) -> None:
    ids = [(await store.create(columns(f"d{i}"), version())).id for i in range(7)]
    seen, token = [], ""
    while True:
        page, token = await store.list("alice", None, token, 3)
        seen += [d.id for d in page]
        assert all(d.versions for d in page)
        if not token:
            break
    assert seen == ids[::-1]
    with pytest.raises(errors.InvalidArgument):
        await store.list("alice", None, "garbage", 3)


async def test_scale_delete_and_purge(store: DeployerStore) -> None:
    d = await store.create(columns("scaled"), version())
    assert (await store.scale(d.id, "alice", 3)).replicas == 3
    deleting = await store.mark_deleting(d.id, "alice")
    assert deleting.state == DELETING and deleting.deleted_at is not None
    with pytest.raises(errors.FailedPrecondition):
        await store.scale(d.id, "alice", 1)
    # the controller's status never takes a deployment out of DELETING
    await store.set_status(d.id, READY, 2)
    assert (await store.get(d.id, None)).state == DELETING
    listed, _ = await store.list("alice", "DELETING", "", 0)
    assert [x.id for x in listed] == [d.id]
    await store.purge(d.id)
    with pytest.raises(errors.NotFound):
        await store.get(d.id, None)


async def test_replicas_and_status_round_trip(store: DeployerStore) -> None:
    d = await store.create(columns("served"), version())
    v = d.versions[0]
    r = Replica(new_id(), d.id, v.id, "ctl", 4242, 0, R_STARTING, now(), None)
    await store.add_replica(r)
    assert await store.ready_replicas(d.id) == []
    assert (await store.get(d.id, None)).versions[0].ready_replicas == 0  # only STARTING
    await store.set_replica(r.id, state=R_READY, port=5555, ready_at=now())
    [(replica, served)] = await store.ready_replicas(d.id)
    assert (replica.port, replica.pid, served.version) == (5555, 4242, "v1")
    # each version counts its own ready replicas, in a get and in a listing
    assert (await store.get(d.id, None)).versions[0].ready_replicas == 1
    assert (await store.list("alice", None, "", 0))[0][0].versions[0].ready_replicas == 1
    assert replica.ready_at is not None and replica.ready_at.tzinfo is not None
    assert [x.id for x in await store.replicas("ctl")] == [r.id]
    assert await store.replicas("another") == []
    await store.set_status(d.id, READY, 1, endpoint="http://gw/x")
    got = await store.get(d.id, None)
    assert (got.state, got.ready_replicas, got.endpoint) == (READY, 1, "http://gw/x")
    await store.set_version(v.id, "FAILED", "bad model")
    await store.set_status(d.id, FAILED, 0, error="bad model")
    got = await store.get(d.id, None)
    assert (got.state, got.error, got.versions[0].error) == (FAILED, "bad model", "bad model")
    await store.remove_replicas([r.id])
    assert await store.replicas() == []
    # a deployment's replicas go with it
    await store.add_replica(Replica(new_id(), d.id, v.id, "ctl", 1, 0, R_STARTING, now(), None))
    await store.purge(d.id)
    assert await store.replicas() == []


async def test_replicas_of_a_silent_controller_are_not_used(store: DeployerStore) -> None:
    d = await store.create(columns("silent"), version())
    r = Replica(new_id(), d.id, d.versions[0].id, "ctl", 7, 5555, R_READY, now(), now())
    await store.add_replica(r)
    assert len(await store.ready_replicas(d.id)) == 1
    old = now() - dt.timedelta(seconds=STALE_SECONDS + 5)
    async with db.transaction(store.sessions) as s:
        await s.execute(update(tables.replicas).values(heartbeat_at=old))
    assert await store.ready_replicas(d.id) == []
    assert (await store.get(d.id, None)).versions[0].ready_replicas == 0
    await store.heartbeat("another")
    assert await store.ready_replicas(d.id) == []
    await store.heartbeat("ctl")
    assert len(await store.ready_replicas(d.id)) == 1
