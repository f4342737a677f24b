"""The controller: reconciles the deployments in the database with replica processes on this
machine, like a kubelet and a Deployment controller in one.

Each pass (every `interval` seconds, or at once on a nudge from the server): reap replicas
that exited (a bad model, exit 3, fails its deployment with the loader's reason; any other
exit is replaced), start or stop replicas to match each version's desired count, tear down
deleted deployments, ask every replica's health, then write the readiness and states that
changed to the database and the READY endpoints to Envoy's cluster file."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import redis.asyncio as aioredis
from service_kit.redis_clients import async_client

from .. import load
from ..models import remove_files
from ..replica_host import listen_host, resolved
from ..store import (
    DELETING,
    FAILED,
    HEARTBEAT_SECONDS,
    PENDING,
    R_READY,
    R_STARTING,
    READY,
    V_PENDING,
    V_RETIRED,
    V_SERVING,
    DeployerStore,
    Deployment,
    Replica,
    Version,
    draining,
    new_id,
    now,
    weighted,
)
from . import procs
from .autoscale import Autoscaler, envoy_inflight
from .envoy import ClusterFile, Locality, cluster
from .procs import Proc
from .rollouts import RolloutJobs

log = logging.getLogger("neural.deployer.controller")
UNHEALTHY_AFTER = 2  # failed health checks in a row that take a READY replica out
BACKOFF_MAX = 30.0  # seconds between restarts of a deployment whose replicas keep dying


def desired(d: Deployment, live: list[Version], v: Version) -> int:
    """Replicas wanted for version `v`: all of them for a lone version; for a split, its
    share (at least one while it has traffic)."""
    if d.replicas == 0 or v.traffic_percent == 0:
        return 0
    if len(live) == 1:
        return d.replicas
    return max(1, round(d.replicas * v.traffic_percent / 100))


class Controller:
    def __init__(
        self,
        store: DeployerStore,
        cluster_file: ClusterFile,
        storage: Path,
        gateway_url: str,
        interval: float = 0.5,
        threads: int = 1,
        redis_url: str = "",
        autoscaler: Autoscaler | None = None,
        envoy_admin_url: str = "",
        rollouts: RolloutJobs | None = None,
        replica_host: str = "127.0.0.1",
    ) -> None:
        self.store = store
        self.clusters = cluster_file
        self.storage = storage
        self.gateway_url = gateway_url.rstrip("/")
        self.interval = interval
        self.threads = threads
        self.id = f"{os.uname().nodename}-{uuid.uuid4().hex[:8]}"
        self.procs: dict[str, Proc] = {}
        self.channels: dict[int, grpc.aio.Channel] = {}
        self.nudged = asyncio.Event()
        self.stopping: set[asyncio.Task] = set()
        # version id -> (restarts in a row, monotonic time before which none starts)
        self.backoff: dict[str, tuple[int, float]] = {}
        self.redis = async_client(redis_url, socket_timeout=1) if redis_url else None
        self.autoscaler = autoscaler or Autoscaler()
        self.envoy_admin_url = envoy_admin_url
        self.beat = 0.0  # monotonic time of the last heartbeat
        self.rollouts = rollouts  # None: rollout jobs are left to another controller
        # where the replicas are reached (an address: Envoy's clusters take no names) and
        # what they bind
        self.replica_address = resolved(replica_host)
        self.replica_listen = listen_host(replica_host)

    # ------------------------------------------------------------ start and stop
    async def adopt_orphans(self) -> int:
        """Kill the replicas a dead predecessor left (their pids are in the database) and
        forget their rows: new ones take seconds to start, and cannot be half-known."""
        rows = await self.store.replicas()
        killed = sum(procs.kill_orphan(r.pid) for r in rows)
        await self.store.remove_replicas([r.id for r in rows])
        # what the predecessor reported is stale: nothing serves until this one says so
        for d in await self.store.active():
            if d.state in (PENDING, READY):
                await self.store.set_status(d.id, "", 0)
        if rows:
            log.info("orphans", extra={"fields": {"rows": len(rows), "killed": killed}})
        return killed

    async def run(self, stop: asyncio.Event) -> None:
        await self.adopt_orphans()
        while not stop.is_set():
            try:
                await self.reconcile()
            except Exception:  # a database hiccup must not end the controller
                log.exception("reconcile failed")
            self.nudged.clear()
            waits = [asyncio.create_task(e.wait()) for e in (stop, self.nudged)]
            await asyncio.wait(waits, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every replica with its drain, forget their rows, list no endpoints."""
        for proc in self.procs.values():
            proc.ready = False
        await self._write_clusters(await self.store.active())
        await asyncio.gather(*(self._stop(p) for p in list(self.procs.values())))
        await asyncio.gather(*self.stopping, return_exceptions=True)
        for d in await self.store.active():
            if d.state in (PENDING, READY):
                await self.store.set_status(d.id, "", 0)
        for channel in self.channels.values():
            await channel.close()
        if self.redis is not None:
            await self.redis.aclose()

    # ------------------------------------------------------------ one pass
    async def reconcile(self) -> None:
        deployments = await self.store.active()
        by_id = {d.id: d for d in deployments}
        await self._reap(by_id)
        deployments = await self.store.active()  # a reaped bad model failed its deployment
        await self._autoscale(deployments)
        for d in deployments:
            if d.state == DELETING:
                await self._tear_down(d)
            elif d.state == FAILED:
                for proc in self._of(d.id):
                    self._stop_later(proc)
            else:
                await self._converge(d)
        # replicas of deployments whose rows are gone (purged by hand, another controller)
        known = {d.id for d in deployments}
        for proc in [p for p in self.procs.values() if p.deployment_id not in known]:
            self._stop_later(proc)
        await self._check_health()
        if time.monotonic() - self.beat >= HEARTBEAT_SECONDS:
            await self.store.heartbeat(self.id)
            self.beat = time.monotonic()
        deployments = await self.store.active()
        await self._report(deployments)
        await self._write_clusters(deployments)
        await self._drive_rollouts(deployments)

    async def _drive_rollouts(self, deployments: list[Deployment]) -> None:
        """Move the rollout jobs of these deployments on (rollouts.py)."""
        if self.rollouts is None or not deployments:
            return
        open_jobs = await self.store.open_rollouts()
        if not open_jobs:
            return
        await self.rollouts.drive(
            deployments,
            open_jobs,
            running=lambda v: len(self._of(v.deployment_id, v.id)),
            ready=lambda v: sum(p.ready for p in self._of(v.deployment_id, v.id)),
            wanted=lambda d, v: desired(d, weighted(d.versions), v),
        )

    async def _autoscale(self, deployments: list[Deployment]) -> None:
        """Replicas of the deployments with bounds follow the predictions in flight."""
        scaled = [d for d in deployments if d.max_replicas and d.state in (PENDING, READY)]
        if not scaled:
            return
        inflight: Counter[str] = Counter()
        if self.redis is not None:
            with contextlib.suppress(Exception):  # Redis away: the replicas stay as they are
                inflight = await load.read(self.redis)
        by_name: Counter[str] = Counter()
        if self.envoy_admin_url:
            by_name = await asyncio.to_thread(envoy_inflight, self.envoy_admin_url)
        at = time.monotonic()
        for d in scaled:
            count = inflight[d.id] + by_name[d.name]
            want = self.autoscaler.decide(
                d.id, d.replicas, d.min_replicas, d.max_replicas, count, at
            )
            if want != d.replicas:
                log.info(
                    "autoscaled",
                    extra={
                        "fields": {
                            "deployment": d.name,
                            "from": d.replicas,
                            "to": want,
                            "inflight": count,
                        }
                    },
                )
                await self.store.set_replicas(d.id, want)
                d.replicas = want

    def _of(self, deployment_id: str, version_id: str | None = None) -> list[Proc]:
        return [
            p
            for p in self.procs.values()
            if p.deployment_id == deployment_id
            and not p.stopping
            and (version_id is None or p.version_id == version_id)
        ]

    async def _reap(self, by_id: dict[str, Deployment]) -> None:
        for proc in [p for p in self.procs.values() if p.exited and not p.stopping]:
            del self.procs[proc.replica_id]
            await asyncio.gather(*proc.tasks, return_exceptions=True)
            code = proc.process.returncode
            reason = proc.reason()
            log.warning(
                "replica exited",
                extra={"fields": {"pid": proc.pid, "code": code, "reason": reason[-300:]}},
            )
            await self.store.remove_replicas([proc.replica_id])
            d = by_id.get(proc.deployment_id)
            if d is None or d.state == DELETING:
                continue
            if code == procs.BAD_MODEL:
                await self._bad_model(d, proc.version_id, reason)
                continue
            count, _ = self.backoff.get(proc.version_id, (0, 0.0))
            if not proc.ready:  # died before serving: wait before the next try
                delay = min(BACKOFF_MAX, 0.5 * 2**count)
                self.backoff[proc.version_id] = (count + 1, time.monotonic() + delay)

    async def _bad_model(self, d: Deployment, version_id: str, reason: str) -> None:
        """A version whose model will not load fails; its traffic goes back to the version it
        was to replace, and the deployment fails only when no other version serves."""
        error = f"the model cannot be served: {reason}"[:2000]
        await self.store.fail_version(version_id, error)
        for proc in self._of(d.id, version_id):
            self._stop_later(proc)
        others = [v for v in weighted(d.versions) + draining(d.versions) if v.id != version_id]
        if not others:
            await self.store.set_status(d.id, FAILED, 0, error=error, endpoint="")

    async def _converge(self, d: Deployment) -> None:
        serving, leaving = weighted(d.versions), draining(d.versions)
        kept = {v.id for v in serving + leaving}
        for proc in self._of(d.id):
            if proc.version_id not in kept:  # a retired or failed version
                self._stop_later(proc)
        complete = True
        for v in serving:
            running = self._of(d.id, v.id)
            want = desired(d, serving, v)
            complete &= sum(p.ready for p in running) >= want
            if len(running) < want:
                if time.monotonic() < self.backoff.get(v.id, (0, 0.0))[1]:
                    continue
                for _ in range(want - len(running)):
                    await self._start(d, v)
            elif len(running) > want:
                # the ones not serving yet first, then the newest
                running.sort(key=lambda p: (p.ready, -p.started))
                for proc in running[: len(running) - want]:
                    self._stop_later(proc)
        # A version that lost its traffic serves on (as the cluster's fallback) until the
        # versions that took it have all their replicas ready: a promotion or a rollback never
        # leaves a moment with nothing ready.
        for v in leaving:
            running = self._of(d.id, v.id)
            if complete or not any(p.ready for p in running):
                for proc in running:
                    self._stop_later(proc)
                await self.store.set_version(v.id, V_RETIRED)

    async def _start(self, d: Deployment, v: Version) -> None:
        args = procs.replica_args(
            v.model_path,
            d.name,
            v.version,
            d.max_batch_size,
            d.max_batch_delay_us,
            self.threads,
            self.replica_listen,
        )
        replica_id = new_id()
        proc = await procs.spawn(replica_id, d.id, v.id, args, Path.cwd())
        self.procs[replica_id] = proc
        await self.store.add_replica(
            Replica(replica_id, d.id, v.id, self.id, proc.pid, 0, R_STARTING, now(), None)
        )
        log.info(
            "replica started",
            extra={"fields": {"deployment": d.name, "version": v.version, "pid": proc.pid}},
        )

    def _stop_later(self, proc: Proc) -> None:
        """Out of the endpoints at once (the next cluster file), then drained and stopped."""
        if proc.stopping:
            return
        proc.stopping = True
        proc.ready = False
        task = asyncio.create_task(self._stop(proc))
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)

    async def _stop(self, proc: Proc) -> None:
        proc.stopping, proc.ready = True, False
        await self.store.set_replica(proc.replica_id, state="STOPPING")
        # Envoy must stop sending to it before it stops listening
        await self._write_clusters(await self.store.active())
        await procs.stop(proc)
        self.procs.pop(proc.replica_id, None)
        channel = self.channels.pop(proc.port, None)
        if channel is not None:
            await channel.close()
        await self.store.remove_replicas([proc.replica_id])

    async def _tear_down(self, d: Deployment) -> None:
        for proc in self._of(d.id):
            self._stop_later(proc)
        if any(p.deployment_id == d.id for p in self.procs.values()):
            return  # still draining: the next pass finishes
        await self._drive_rollouts([d])  # its open rollout is cancelled before its rows go
        await asyncio.to_thread(remove_files, self.storage, d.id)
        await self.store.purge(d.id)
        self.autoscaler.forget(d.id)
        for v in d.versions:
            self.backoff.pop(v.id, None)
        log.info("deployment deleted", extra={"fields": {"deployment": d.name}})

    async def _check_health(self) -> None:
        checked = [p for p in self.procs.values() if not p.stopping and not p.exited]
        for proc in checked:
            if not proc.port_known.is_set() and time.monotonic() - proc.started > (
                procs.PORT_TIMEOUT
            ):
                log.warning("replica never listened", extra={"fields": {"pid": proc.pid}})
                self._stop_later(proc)
        checked = [p for p in checked if p.port and not p.stopping]
        results = await asyncio.gather(*(procs.healthy(self._channel(p.port)) for p in checked))
        for proc, ok in zip(checked, results, strict=True):
            proc.failures = 0 if ok else proc.failures + 1
            was = proc.ready
            if ok:
                proc.ready = True
            elif proc.failures >= UNHEALTHY_AFTER or not was:
                proc.ready = False
            if proc.ready != was:
                state = R_READY if proc.ready else R_STARTING
                values = {"state": state, "port": proc.port}
                if proc.ready:
                    values["ready_at"] = now()
                    self.backoff.pop(proc.version_id, None)
                await self.store.set_replica(proc.replica_id, **values)
                proc.port_saved = True
            elif not proc.port_saved:  # the port, as soon as known
                await self.store.set_replica(proc.replica_id, port=proc.port)
                proc.port_saved = True

    def _channel(self, port: int) -> grpc.aio.Channel:
        channel = self.channels.get(port)
        if channel is None:
            target = f"{self.replica_address}:{port}"
            channel = self.channels[port] = grpc.aio.insecure_channel(target)
        return channel

    async def _report(self, deployments: list[Deployment]) -> None:
        for d in deployments:
            if d.state not in (PENDING, READY):
                continue
            ready = [p for p in self._of(d.id) if p.ready]
            # READY once a replica serves, and READY it stays while replicas come and go
            # (ready_replicas says how many serve now); PENDING only until the first one.
            state = READY if ready else d.state
            endpoint = f"{self.gateway_url}/v1/deployments/{d.id}:predict" if ready else d.endpoint
            # versions first: a reader that sees READY sees the version serving
            serving = {p.version_id for p in ready}
            for v in d.versions:
                if v.id in serving and v.state == V_PENDING:
                    await self.store.set_version(v.id, V_SERVING)
            if (state, len(ready), endpoint) != (d.state, d.ready_replicas, d.endpoint):
                await self.store.set_status(d.id, state, len(ready), endpoint=endpoint)

    def localities(self, d: Deployment) -> list[Locality]:
        """The versions with traffic and their READY replicas; while none of them has one,
        the draining versions' replicas (equal weights) rather than no endpoint at all."""
        out = []
        for v in weighted(d.versions):
            ports = [p.port for p in self._of(d.id, v.id) if p.ready]
            out.append(Locality(v.version, v.traffic_percent, ports))
        if not any(loc.ports for loc in out):
            for v in draining(d.versions):
                ports = [p.port for p in self._of(d.id, v.id) if p.ready]
                out.append(Locality(v.version, 1, ports))
        return out

    async def _write_clusters(self, deployments: list[Deployment]) -> None:
        clusters = [
            cluster(
                d.name,
                self.localities(d) if d.state in (PENDING, READY) else [],
                self.replica_address,
            )
            for d in deployments
        ]
        if self.clusters.write(clusters):
            log.info(
                "cluster file written",
                extra={"fields": {"version": self.clusters.version, "clusters": len(clusters)}},
            )


async def listen(redis_url: str, channel: str, nudged: asyncio.Event) -> None:
    """Set `nudged` on each message on `channel`; reconnects, since the loop polls anyway."""

    while True:
        client = aioredis.from_url(redis_url, socket_connect_timeout=2)
        try:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    nudged.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.sleep(2)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()
