"""Rollout jobs, moved through the kit's one lifecycle by the controller that runs the canary:

    QUEUED -> RUNNING      its replicas have been started (on this controller)
           -> SUCCEEDED    they serve: ready, as many as the version's share wants
           -> FAILED       they cannot load the model (the loader's reason), or the deployment
                           failed
           -> CANCELLED    rolled back (the version lost its traffic) or deleted before then

A promotion before the canary serves leaves the job running until the promoted version serves
all the replicas. The database says which jobs are open (`DeployerStore.open_rollouts`); a job
that ended meanwhile is skipped by the lifecycle (`start` answers None, `finish` changes
nothing), so two controllers, or a restarted one, never end a job twice."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from service_kit.jobs import JobStore
from service_kit.lifecycle import Lifecycle

from ..store import DELETING, FAILED, V_FAILED, V_RETIRED, V_SERVING, Deployment, Version

log = logging.getLogger("neural.deployer.controller")
# Starts of one rollout (a controller restarted during it resumes it); past them it fails.
MAX_ATTEMPTS = 5


class RolloutJobs:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.started: set[str] = set()  # jobs this controller has started (or resumed)

    async def drive(
        self,
        deployments: list[Deployment],
        open_jobs: dict[str, str],
        running: Callable[[Version], int],
        ready: Callable[[Version], int],
        wanted: Callable[[Deployment, Version], int],
    ) -> None:
        """One step of every open rollout job; `running`, `ready` and `wanted` count the
        version's replica processes here, the ready ones, and the ones its share wants."""
        for d in deployments:
            for v in d.versions:
                job_id = open_jobs.get(v.id)
                if job_id:
                    try:
                        await self._step(d, v, job_id, running, ready, wanted)
                    except Exception:  # one job's trouble must not stop the others
                        log.exception("rollout job step failed", extra={"fields": {"job": job_id}})

    async def _step(
        self,
        d: Deployment,
        v: Version,
        job_id: str,
        running: Callable[[Version], int],
        ready: Callable[[Version], int],
        wanted: Callable[[Deployment, Version], int],
    ) -> None:
        life = Lifecycle(self.jobs, job_id, MAX_ATTEMPTS)
        if v.state == V_FAILED:
            await self._end(job_id, life.fail(v.error or "the canary failed"))
        elif d.state == FAILED:
            await self._end(job_id, life.fail(d.error or "the deployment failed"))
        elif d.state == DELETING:
            await self._end(job_id, life.cancel("the deployment was deleted"))
        elif v.traffic_percent == 0 or v.state == V_RETIRED:
            await self._end(job_id, life.cancel(f"rolled back: {v.version} serves nothing"))
        elif job_id not in self.started:
            if running(v) == 0:
                return  # QUEUED until its replicas start (none while scaled to zero)
            details = {
                "deployment": d.name,
                "deployment_id": d.id,
                "version": v.version,
                "traffic_percent": v.traffic_percent,
            }
            if await life.start(details=details) is None:
                self.started.discard(job_id)  # ended meanwhile: skipped
                return
            self.started.add(job_id)
        elif v.state == V_SERVING and ready(v) >= max(wanted(d, v), 1):
            share = f"{v.traffic_percent}%" if v.traffic_percent < 100 else "all"
            await self._end(
                job_id,
                life.succeed(
                    f"{v.version} serves {share} of {d.name}'s predictions",
                    progress=1.0,
                ),
            )

    async def _end(self, job_id: str, ending: Awaitable[bool]) -> None:
        await ending  # False when it had already ended: nothing more to do either way
        self.started.discard(job_id)
