"""`python -m services.deployer.controller`: the replica processes of this machine's
deployments, reconciled with the database until SIGTERM (then they are drained and stopped).
It waits for the deployer server to have migrated the database: the server alone migrates.

Environment: the deployer's own NEURAL_* settings (database, Redis, storage), plus
NEURAL_ENVOY_DYNAMIC_DIR (default `<NEURAL_DATA_DIR>/envoy-dynamic`) where Envoy's cluster
file is written, NEURAL_GATEWAY_URL (the endpoints' base, default
http://127.0.0.1:$NEURAL_GATEWAY_PORT), NEURAL_DEPLOYER_RECONCILE_MS (500),
NEURAL_REPLICA_THREADS (onnxruntime threads per replica, 1), NEURAL_REPLICA_HOST (where
the replicas are reached, 127.0.0.1; see replica_host.py), and for autoscaling:
NEURAL_DEPLOYER_TARGET_INFLIGHT (requests in flight per replica, 4),
NEURAL_DEPLOYER_SCALE_DOWN_COOLDOWN_S (30) and NEURAL_ENVOY_ADMIN_URL (the gateway's admin, to
count the requests it has in flight to each deployment; unset: the deployer's Predict only).

It also moves rollout jobs through their lifecycle (rollouts.py) and delivers their webhooks:
a Dramatiq worker for the `deployer.webhooks` queue runs in this process
(NEURAL_DEPLOYER_WEBHOOK_THREADS, 2; 0 leaves them to `dramatiq services.deployer.worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from service_kit import db, logs, webhooks
from service_kit.jobs import JobStore
from service_kit.settings import SettingsError, _int, load
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .. import tables, tasks
from ..app import MIGRATIONS, VERSION_TABLE
from ..replica_host import ReplicaHostError, replica_host
from ..service import NUDGE
from ..store import DeployerStore
from .autoscale import Autoscaler
from .envoy import ClusterFile
from .reconcile import Controller, listen
from .rollouts import RolloutJobs

log = logging.getLogger("neural.deployer.controller")


def dynamic_dir() -> Path:
    data_dir = Path(os.environ.get("NEURAL_DATA_DIR", ".run")).resolve()
    return Path(os.environ.get("NEURAL_ENVOY_DYNAMIC_DIR") or data_dir / "envoy-dynamic").resolve()


def gateway_url() -> str:
    port = _int("NEURAL_GATEWAY_PORT", 8080, 1, 65535)
    return os.environ.get("NEURAL_GATEWAY_URL") or f"http://127.0.0.1:{port}"


def head_revision() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


async def wait_for_schema(engine: AsyncEngine, stop: asyncio.Event) -> bool:
    """Wait until the server has migrated the deployer's tables to the revision this code
    expects: the server alone migrates (two processes creating the tables at once on
    PostgreSQL would race). False when stopped first."""
    head = head_revision()
    said = False
    while not stop.is_set():
        try:
            async with engine.connect() as conn:
                found = await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
                if head in {row[0] for row in found}:
                    return True
        except Exception:  # no table yet, or the database is not up yet
            pass
        if not said:
            log.info("waiting for the deployer server to migrate the database")
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return False


async def run() -> None:
    settings = load("deployer")
    logs.setup("deployer-controller", settings.log_level)
    interval = _int("NEURAL_DEPLOYER_RECONCILE_MS", 500, 50, 60_000) / 1000
    threads = _int("NEURAL_REPLICA_THREADS", 1, 1, 256)
    engine = db.make_engine(settings.database_url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not await wait_for_schema(engine, stop):
        await engine.dispose()
        return
    store = DeployerStore(engine)
    from .. import worker  # sets the broker up and declares the webhook actor on it

    hook_threads = _int("NEURAL_DEPLOYER_WEBHOOK_THREADS", 2, 0, 64)
    deliveries = worker.start(hook_threads) if hook_threads else None
    sender = webhooks.WebhookSender(tasks.WEBHOOKS, tables.webhook_deliveries)
    jobs = JobStore(engine, tables.jobs, settings.redis_url, sender)
    autoscaler = Autoscaler(
        per_replica=_int("NEURAL_DEPLOYER_TARGET_INFLIGHT", 4, 1, 100_000),
        cooldown=_int("NEURAL_DEPLOYER_SCALE_DOWN_COOLDOWN_S", 30, 0, 86_400),
    )
    controller = Controller(
        store,
        ClusterFile(dynamic_dir()),
        settings.storage_dir,
        gateway_url(),
        interval,
        threads,
        settings.redis_url,
        autoscaler,
        os.environ.get("NEURAL_ENVOY_ADMIN_URL", ""),
        RolloutJobs(jobs),
        replica_host(),
    )
    nudges = asyncio.create_task(listen(settings.redis_url, NUDGE, controller.nudged))
    log.info(
        "controller running",
        extra={"fields": {"id": controller.id, "cluster_file": str(controller.clusters.path)}},
    )
    try:
        await controller.run(stop)
    finally:
        nudges.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await nudges
        await store.close()
        if deliveries is not None:
            await asyncio.to_thread(deliveries.stop)
    log.info("controller stopped")


def main() -> None:
    try:
        asyncio.run(run())
    except (SettingsError, ReplicaHostError) as exc:
        raise SystemExit(f"deployer controller: {exc}") from None


if __name__ == "__main__":
    main()
