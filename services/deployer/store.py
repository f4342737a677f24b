"""The deployer's rows: what the server writes (deployments, versions, desired replicas) and
what the controller writes (replica processes, readiness, state).

Owner scoping follows service_kit.owners: another owner's deployment is NOT_FOUND."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any

from service_kit import db, errors, owners, pagination
from service_kit.jobs import TERMINAL
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import deployments, jobs, replicas, versions

PENDING, READY, FAILED, DELETING = "PENDING", "READY", "FAILED", "DELETING"
V_PENDING, V_SERVING, V_FAILED, V_RETIRED = "PENDING", "SERVING", "FAILED", "RETIRED"
R_STARTING, R_READY, R_STOPPING = "STARTING", "READY", "STOPPING"
LISTING = "deployer_deployments"
HEARTBEAT_SECONDS = 2.0  # how often a controller vouches for its replicas
STALE_SECONDS = 10.0  # a replica not vouched for this long is not used


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Version:
    id: str
    deployment_id: str
    version: str
    run_id: str
    artifact_path: str
    model_id: str
    model_path: str
    traffic_percent: int
    state: str
    error: str
    created_at: dt.datetime
    rollout_job_id: str = ""  # the job that rolled it out; "" for the first version
    # Not a column: its READY replicas whose controller still beats (as ready_replicas counts)
    ready_replicas: int = 0


@dataclass
class Deployment:
    id: str
    name: str
    owner: str
    state: str
    runtime: str
    replicas: int
    min_replicas: int
    max_replicas: int
    ready_replicas: int
    max_batch_size: int
    max_batch_delay_us: int
    cpu: str
    memory: str
    gpu: int
    endpoint: str
    error: str
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    versions: list[Version] = field(default_factory=list)  # newest first


@dataclass
class Replica:
    id: str
    deployment_id: str
    version_id: str
    controller_id: str
    pid: int
    port: int
    state: str
    started_at: dt.datetime
    ready_at: dt.datetime | None


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _deployment(row: Any) -> Deployment:
    m = dict(row._mapping)
    for key in ("created_at", "updated_at", "deleted_at"):
        m[key] = _utc(m[key])
    return Deployment(**m)


def _version(row: Any) -> Version:
    m = dict(row._mapping)
    m["created_at"] = _utc(m["created_at"])
    return Version(**m)


def _replica(row: Any, table: Any = None) -> Replica:
    # by Column when the row joins another table that has columns of the same names
    keys = Replica.__dataclass_fields__
    m = {k: row._mapping[table.c[k] if table is not None else k] for k in keys}
    m["started_at"], m["ready_at"] = _utc(m["started_at"]), _utc(m["ready_at"])
    return Replica(**m)


def weighted(found: list[Version]) -> list[Version]:
    """The versions that receive traffic, newest first."""
    return [v for v in found if v.state in (V_PENDING, V_SERVING) and v.traffic_percent > 0]


def draining(found: list[Version]) -> list[Version]:
    """Versions that lost their traffic (promoted over, rolled back) but may still serve
    until the ones with traffic are ready."""
    return [v for v in found if v.state in (V_PENDING, V_SERVING) and v.traffic_percent == 0]


def _not_found(deployment_id: str) -> errors.NotFound:
    return errors.NotFound(f"no deployment {errors.shown(deployment_id)}")


class DeployerStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = db.sessions(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------ the server's side
    async def name_taken(self, name: str) -> bool:
        async with self.sessions() as s:
            found = await s.execute(select(deployments.c.id).where(deployments.c.name == name))
            return found.first() is not None

    async def create(self, deployment: dict[str, Any], version: dict[str, Any]) -> Deployment:
        """Insert a deployment with its first version; ALREADY_EXISTS when its name is taken."""
        at = now()
        row = {"state": PENDING, "created_at": at, "updated_at": at, **deployment}
        ver = {"state": V_PENDING, "created_at": at, "deployment_id": row["id"], **version}
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(deployments.insert().values(**row))
                await s.execute(versions.insert().values(**ver))
        except IntegrityError:
            raise errors.AlreadyExists(
                f"a deployment named {errors.shown(row['name'])} exists"
            ) from None
        return await self.get(row["id"], None)

    async def get(self, deployment_id: str, owner: str | None) -> Deployment:
        """A deployment by its id or, failing that, by its name: the name is what the replicas
        and the gateway know it by, so a credential limited to `deployments/<name>` can use
        every RPC on it with its name in place of the id."""
        async with self.sessions() as s:
            row = (
                await s.execute(select(deployments).where(deployments.c.id == deployment_id))
            ).first() or (
                await s.execute(select(deployments).where(deployments.c.name == deployment_id))
            ).first()
            if row is None or not owners.visible(row.owner, owner):
                raise _not_found(deployment_id)
            found = _deployment(row)
            found.versions = await self._versions(s, [found.id])
        return found

    @staticmethod
    async def _versions(s: Any, ids: list[str]) -> list[Version]:
        rows = await s.execute(
            select(versions)
            .where(versions.c.deployment_id.in_(ids))
            .order_by(versions.c.created_at.desc(), versions.c.version.desc())
        )
        found = [_version(r) for r in rows]
        if found:
            fresh = now() - dt.timedelta(seconds=STALE_SECONDS)
            counts = await s.execute(
                select(replicas.c.version_id, func.count())
                .where(
                    replicas.c.deployment_id.in_(ids),
                    replicas.c.state == R_READY,
                    replicas.c.heartbeat_at >= fresh,
                )
                .group_by(replicas.c.version_id)
            )
            ready = {version_id: count for version_id, count in counts}
            for v in found:
                v.ready_replicas = ready.get(v.id, 0)
        return found

    async def list(
        self, owner: str | None, state: str | None, token: str, size: int
    ) -> tuple[list[Deployment], str]:
        query = owners.restrict(select(deployments), deployments.c.owner, owner)
        if state:
            query = query.where(deployments.c.state == state)
        rows, next_token = await pagination.newest_first(
            self.sessions, deployments, query, token, size, LISTING
        )
        found = [_deployment(r) for r in rows]
        if found:
            async with self.sessions() as s:
                by_id: dict[str, list[Version]] = {}
                for v in await self._versions(s, [d.id for d in found]):
                    by_id.setdefault(v.deployment_id, []).append(v)
            for d in found:
                d.versions = by_id.get(d.id, [])
        return found, next_token

    async def mark_deleting(self, deployment_id: str, owner: str | None) -> Deployment:
        """DELETING: the controller stops its replicas, removes its files, then its rows."""
        found = await self.get(deployment_id, owner)
        at = now()
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(deployments)
                .where(deployments.c.id == found.id, deployments.c.state != DELETING)
                .values(state=DELETING, deleted_at=at, updated_at=at, endpoint="")
            )
        return await self.get(found.id, owner)

    async def scale(self, deployment_id: str, owner: str | None, count: int) -> Deployment:
        found = await self.get(deployment_id, owner)
        if found.state in (DELETING, FAILED):
            raise errors.FailedPrecondition(
                f"deployment {errors.shown(deployment_id)} is {found.state}: it cannot be scaled"
            )
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(deployments)
                .where(deployments.c.id == found.id, deployments.c.state.in_([PENDING, READY]))
                .values(replicas=count, updated_at=now())
            )
        return await self.get(found.id, owner)

    # ------------------------------------------------------------ rollouts
    async def next_version(self, deployment_id: str, owner: str | None) -> tuple[Deployment, str]:
        """The deployment, checked to be able to take a rollout, and its next version's id."""
        found = await self.get(deployment_id, owner)
        if found.state not in (PENDING, READY):
            raise errors.FailedPrecondition(
                f"deployment {errors.shown(found.name)} is {found.state}: no rollout"
            )
        if len(weighted(found.versions)) > 1:
            raise errors.FailedPrecondition(
                f"deployment {errors.shown(found.name)} has a canary out: promote it or roll "
                "it back first"
            )
        numbers = [int(v.version[1:]) for v in found.versions if v.version[1:].isdigit()]
        return found, f"v{max(numbers, default=0) + 1}"

    async def rollout(self, found: Deployment, version: dict[str, Any]) -> Deployment:
        """Add `version` with its traffic_percent; the serving version keeps the rest. A
        concurrent rollout that took the same version id is ABORTED-like FAILED_PRECONDITION."""
        at = now()
        current = weighted(found.versions)
        try:
            async with db.transaction(self.sessions) as s:
                for v in current:
                    await s.execute(
                        update(versions)
                        .where(versions.c.id == v.id)
                        .values(traffic_percent=100 - version["traffic_percent"])
                    )
                await s.execute(
                    versions.insert().values(
                        state=V_PENDING, created_at=at, deployment_id=found.id, **version
                    )
                )
                await s.execute(
                    update(deployments).where(deployments.c.id == found.id).values(updated_at=at)
                )
        except IntegrityError:
            raise errors.FailedPrecondition(
                f"another rollout of {errors.shown(found.name)} started at the same time"
            ) from None
        return await self.get(found.id, None)

    async def promote(
        self, deployment_id: str, owner: str | None, back: bool = False
    ) -> Deployment:
        """The canary (the newest version with traffic) takes it all, or with `back` gives it
        all back to the version it was to replace. The one left without traffic drains: the
        controller retires it once the other's replicas are ready."""
        found = await self.get(deployment_id, owner)
        live = weighted(found.versions)
        if found.state not in (PENDING, READY) or len(live) < 2:
            raise errors.FailedPrecondition(
                f"deployment {errors.shown(found.name)} has no canary to "
                + ("roll back" if back else "promote")
            )
        canary, rest = live[0], live[1:]  # newest first
        winner, losers = (rest[0], [canary, *rest[1:]]) if back else (canary, rest)
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(versions).where(versions.c.id == winner.id).values(traffic_percent=100)
            )
            await s.execute(
                update(versions)
                .where(versions.c.id.in_([v.id for v in losers]))
                .values(traffic_percent=0)
            )
            await s.execute(
                update(deployments).where(deployments.c.id == found.id).values(updated_at=now())
            )
        return await self.get(found.id, None)

    async def fail_version(self, version_id: str, error: str) -> None:
        """A version whose replicas cannot load its model: FAILED, without traffic, which goes
        back to the one other version with traffic, if there is one."""
        async with db.transaction(self.sessions) as s:
            row = (await s.execute(select(versions).where(versions.c.id == version_id))).first()
            if row is None:
                return
            await s.execute(
                update(versions)
                .where(versions.c.id == version_id)
                .values(state=V_FAILED, error=error, traffic_percent=0)
            )
            others = (
                await s.execute(
                    select(versions.c.id).where(
                        versions.c.deployment_id == row.deployment_id,
                        versions.c.id != version_id,
                        versions.c.traffic_percent > 0,
                        versions.c.state.in_([V_PENDING, V_SERVING]),
                    )
                )
            ).all()
            if len(others) == 1:
                await s.execute(
                    update(versions)
                    .where(versions.c.id == others[0].id)
                    .values(traffic_percent=100)
                )

    async def wake(self, deployment_id: str) -> bool:
        """One replica wanted for a deployment scaled to zero (autoscaled, none desired): a
        prediction is waiting for it. True when this call asked for it."""
        async with db.transaction(self.sessions) as s:
            done = await s.execute(
                update(deployments)
                .where(
                    deployments.c.id == deployment_id,
                    deployments.c.state.in_([PENDING, READY]),
                    deployments.c.max_replicas > 0,
                    deployments.c.replicas == 0,
                )
                .values(replicas=1, updated_at=now())
            )
        return done.rowcount == 1

    async def ready_replicas(self, deployment_id: str) -> list[tuple[Replica, Version]]:
        """The deployment's READY replicas with the version each serves, but for those whose
        controller has stopped beating (it died: so did its replicas)."""
        fresh = now() - dt.timedelta(seconds=STALE_SECONDS)
        async with self.sessions() as s:
            rows = await s.execute(
                select(replicas, versions)
                .join(versions, versions.c.id == replicas.c.version_id)
                .where(
                    replicas.c.deployment_id == deployment_id,
                    replicas.c.state == R_READY,
                    replicas.c.heartbeat_at >= fresh,
                )
            )
            out = []
            for r in rows:
                m = r._mapping
                version = Version(
                    **{c.name: m[c] for c in versions.c}  # the columns: not ready_replicas
                )
                version.created_at = _utc(version.created_at)
                out.append((_replica(r, replicas), version))
        return out

    # ------------------------------------------------------------ the controller's side
    async def active(self) -> list[Deployment]:
        """Every deployment with its versions, for a reconcile pass."""
        async with self.sessions() as s:
            found = [_deployment(r) for r in await s.execute(select(deployments))]
            if found:
                by_id: dict[str, list[Version]] = {}
                for v in await self._versions(s, [d.id for d in found]):
                    by_id.setdefault(v.deployment_id, []).append(v)
                for d in found:
                    d.versions = by_id.get(d.id, [])
        return found

    async def replicas(self, controller_id: str | None = None) -> list[Replica]:
        query = select(replicas)
        if controller_id is not None:
            query = query.where(replicas.c.controller_id == controller_id)
        async with self.sessions() as s:
            return [_replica(r) for r in await s.execute(query)]

    async def add_replica(self, replica: Replica) -> None:
        async with db.transaction(self.sessions) as s:
            await s.execute(
                replicas.insert().values(
                    **{k: getattr(replica, k) for k in Replica.__dataclass_fields__},
                    heartbeat_at=now(),
                )
            )

    async def set_replica(self, replica_id: str, **values: Any) -> None:
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(replicas)
                .where(replicas.c.id == replica_id)
                .values(**values, heartbeat_at=now())
            )

    async def heartbeat(self, controller_id: str) -> None:
        """The controller's replicas are alive as far as it knows (see ready_replicas)."""
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(replicas)
                .where(replicas.c.controller_id == controller_id)
                .values(heartbeat_at=now())
            )

    async def remove_replicas(self, ids: list[str]) -> None:
        if ids:
            async with db.transaction(self.sessions) as s:
                await s.execute(delete(replicas).where(replicas.c.id.in_(ids)))

    async def set_replicas(self, deployment_id: str, count: int) -> None:
        """The autoscaler's change of the desired replicas."""
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(deployments)
                .where(deployments.c.id == deployment_id, deployments.c.state.in_([PENDING, READY]))
                .values(replicas=count, updated_at=now())
            )

    async def set_status(
        self,
        deployment_id: str,
        state: str,
        ready: int,
        error: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        """The controller's view of a deployment; a DELETING one stays DELETING."""
        values: dict[str, Any] = {"ready_replicas": ready, "updated_at": now()}
        if state:
            values["state"] = state
        if error is not None:
            values["error"] = error
        if endpoint is not None:
            values["endpoint"] = endpoint
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(deployments)
                .where(deployments.c.id == deployment_id, deployments.c.state != DELETING)
                .values(**values)
            )

    async def set_version(self, version_id: str, state: str, error: str = "") -> None:
        async with db.transaction(self.sessions) as s:
            await s.execute(
                update(versions).where(versions.c.id == version_id).values(state=state, error=error)
            )

    async def open_rollouts(self) -> dict[str, str]:
        """Version id -> its rollout job's id, for every rollout job that has not ended."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(versions.c.id, versions.c.rollout_job_id)
                .join(jobs, jobs.c.id == versions.c.rollout_job_id)
                .where(jobs.c.state.not_in(TERMINAL))
            )
            return {r.id: r.rollout_job_id for r in rows}

    async def purge(self, deployment_id: str) -> None:
        """Remove a deleted deployment's rows (its versions and replicas go with it)."""
        async with db.transaction(self.sessions) as s:
            await s.execute(delete(replicas).where(replicas.c.deployment_id == deployment_id))
            await s.execute(delete(versions).where(versions.c.deployment_id == deployment_id))
            await s.execute(delete(deployments).where(deployments.c.id == deployment_id))

    async def count(self) -> int:
        async with self.sessions() as s:
            return (await s.execute(select(func.count()).select_from(deployments))).scalar_one()
