"""`python -m services.migrate`: bring every service's tables to the newest schema, then exit.

Each service also migrates its own tables when it starts (idempotent at head). This command is
for running the migrations before any service starts, once, where replicas start together: the
Kubernetes Job `neural-migrate` and docker compose's `migrate` service. `--check` changes
nothing and exits 1 when some owner is behind (a deploy step can wait on it).

It reads NEURAL_DATABASE_URL (and NEURAL_DATA_DIR for the SQLite default), as the services do.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from service_kit import db
from service_kit.settings import SettingsError, load
from sqlalchemy.exc import OperationalError


@dataclass(frozen=True)
class Owner:
    """A service that owns tables: its package, whose `migrations/` folder holds its scripts,
    and its own Alembic version table."""

    name: str
    package: str

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    @property
    def scripts(self) -> Path:
        # found without importing the package: a service's app pulls in its frameworks
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise LookupError(f"package {self.package} not found")
        return Path(next(iter(spec.submodule_search_locations))) / "migrations"


# authz first: its keys are what every other service's callers need
OWNERS = (
    Owner("authz", "gateway.authz"),
    Owner("compiler", "services.compiler"),
    Owner("trainer", "services.trainer"),
    Owner("tracker", "services.tracker"),
    Owner("deployer", "services.deployer"),
)


async def upgrade(url: str, owners: tuple[Owner, ...]) -> None:
    engine = db.make_engine(url)
    try:
        for owner in owners:
            before, heads = await db.revisions(engine, owner.scripts, owner.version_table)
            if before == heads:
                print(f"{owner.name}: at head {', '.join(sorted(heads))}")
                continue
            await db.migrate(engine, owner.scripts, owner.version_table)
            after, _ = await db.revisions(engine, owner.scripts, owner.version_table)
            shown = ", ".join(sorted(before)) or "empty"
            print(f"{owner.name}: {shown} -> {', '.join(sorted(after))}")
    finally:
        await engine.dispose()


async def behind(url: str, owners: tuple[Owner, ...]) -> list[str]:
    """The owners whose tables are not at head, each as 'name: current -> heads'."""
    engine = db.make_engine(url)
    lagging: list[str] = []
    try:
        for owner in owners:
            current, heads = await db.revisions(engine, owner.scripts, owner.version_table)
            if current != heads:
                shown = ", ".join(sorted(current)) or "empty"
                lagging.append(f"{owner.name}: {shown} -> {', '.join(sorted(heads))}")
    finally:
        await engine.dispose()
    return lagging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.migrate",
        description="Upgrade every service's tables to the newest schema "
        "(NEURAL_DATABASE_URL), then exit.",
    )
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if some owner is behind"
    )
    parser.add_argument(
        "--owner",
        action="append",
        choices=[o.name for o in OWNERS],
        help="only this owner's tables (repeatable; default: all)",
    )
    args = parser.parse_args(argv)
    owners = tuple(o for o in OWNERS if not args.owner or o.name in args.owner)
    try:
        url = load("migrate").database_url
    except SettingsError as e:
        print(f"migrate: {e}", file=sys.stderr)
        return 2
    try:
        if args.check:
            lagging = asyncio.run(behind(url, owners))
            for line in lagging:
                print(f"behind: {line}")
            return 1 if lagging else 0
        asyncio.run(upgrade(url, owners))
    except (OSError, OperationalError) as e:  # the database cannot be reached or opened
        print(f"migrate: cannot reach the database: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
