"""Each owner's Alembic migrations build exactly the tables its code declares: after upgrading a
fresh database, Alembic's autogenerate comparison against the owner's MetaData finds nothing,
on PostgreSQL and on SQLite. A column, index, type or nullability added to tables.py without
a revision fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from service_kit import db
from sqlalchemy import MetaData

from gateway.authz import store as authz_store
from gateway.authz import tables as authz_tables
from services.compiler import app as compiler_app
from services.compiler import tables as compiler_tables
from services.deployer import app as deployer_app
from services.deployer import tables as deployer_tables
from services.tracker import app as tracker_app
from services.tracker import tables as tracker_tables
from services.trainer import app as trainer_app
from services.trainer import tables as trainer_tables

pytestmark = pytest.mark.integration

OWNERS: dict[str, tuple[Path, str, MetaData]] = {
    "authz": (authz_store.MIGRATIONS, authz_store.VERSION_TABLE, authz_tables.metadata),
    "compiler": (compiler_app.MIGRATIONS, compiler_app.VERSION_TABLE, compiler_tables.metadata),
    "deployer": (deployer_app.MIGRATIONS, deployer_app.VERSION_TABLE, deployer_tables.metadata),
    "tracker": (tracker_app.MIGRATIONS, tracker_app.VERSION_TABLE, tracker_tables.metadata),
    "trainer": (trainer_app.MIGRATIONS, trainer_app.VERSION_TABLE, trainer_tables.metadata),
}


def same_empty_default(
    context: Any,
    inspected: Any,
    declared: Any,
    inspected_default: str | None,
    declared_default: Any,
    rendered_declared: str | None,
) -> bool | None:
    """An empty-string server default is the same default: SQLite reflects it as "('')",
    which Alembic's SQLite comparison (it strips quotes around one or more characters
    only) reports as a change. False means "no change"; None lets Alembic compare."""
    if rendered_declared == "" and (inspected_default or "").strip("()") == "''":
        return False
    return None


def differences(conn: Any, metadata: MetaData) -> list[Any]:
    """What autogenerate would put in a new revision: [] when the database matches."""

    def ours(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        # The database holds only this owner's tables and its version table; the version
        # table is Alembic's, not the owner's.
        return type_ != "table" or name in metadata.tables

    context = MigrationContext.configure(
        conn,
        opts={
            "compare_type": True,
            "compare_server_default": same_empty_default,
            "include_name": ours,
            "render_as_batch": conn.dialect.name == "sqlite",
        },
    )
    return compare_metadata(context, metadata)


@pytest.mark.parametrize("owner", sorted(OWNERS))
async def test_migrations_match_the_table_definitions(db_url: str, owner: str) -> None:
    location, version_table, metadata = OWNERS[owner]
    engine = db.make_engine(db_url)
    try:
        await db.migrate(engine, location, version_table)
        async with engine.connect() as conn:
            diff = await conn.run_sync(differences, metadata)
    finally:
        await engine.dispose()
    assert diff == [], f"{owner}: migrations differ from tables: {diff}"
