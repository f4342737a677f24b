"""Worker heartbeats: each Dramatiq worker process says who it is and what it runs, in Redis.

A Dramatiq middleware writes a small hash per worker every few seconds and keeps a sorted
set of workers by last beat; `list_workers` reads them for the trainer's ListWorkers. A
worker whose beats stop for longer than the timeout is reported dead (its unacknowledged
messages are redelivered by the broker).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis

log = logging.getLogger("neural.heartbeat")
WORKERS = "neural:workers"
RETENTION_SECONDS = 3600  # dead workers stay listed this long


def _key(worker_id: str) -> str:
    return f"{WORKERS}:{worker_id}"


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    hostname: str
    pid: int
    queues: list[str]
    last_beat: float
    alive: bool
    in_flight: list[str]


class Heartbeat(dramatiq.Middleware):
    """Beats every `interval` seconds from each worker process, listing in-flight job ids
    (the first argument of each message being processed)."""

    def __init__(self, redis_url: str, interval: float = 2.0) -> None:
        self.redis_url = redis_url
        self.interval = interval
        self.id = ""
        self.in_flight: dict[str, str] = {}  # message id -> job id
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.queues: list[str] = []

    def after_worker_boot(self, broker: Any, worker: Any) -> None:
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def before_worker_shutdown(self, broker: Any, worker: Any) -> None:
        self.stop.set()

    def before_process_message(self, broker: Any, message: Any) -> None:
        with self.lock:
            self.in_flight[message.message_id] = str(message.args[0]) if message.args else ""

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: Any = None
    ) -> None:
        with self.lock:
            self.in_flight.pop(message.message_id, None)

    after_skip_message = after_process_message

    def _run(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=5, socket_connect_timeout=2)
        while not self.stop.is_set():
            try:
                self.beat(client)
            except (redis.RedisError, OSError) as exc:  # Redis restarting: beat again later
                log.warning("heartbeat failed: %s", exc)
            self.stop.wait(self.interval)
        try:
            client.zrem(WORKERS, self.id)
            client.delete(_key(self.id))
        except (redis.RedisError, OSError):
            pass

    def beat(self, client: redis.Redis) -> None:
        with self.lock:
            jobs = sorted(j for j in self.in_flight.values() if j)
        now = time.time()
        info = {
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "in_flight": jobs,
            "last_beat": now,
        }
        pipe = client.pipeline()
        pipe.set(_key(self.id), json.dumps(info), ex=RETENTION_SECONDS)
        pipe.zadd(WORKERS, {self.id: now})
        pipe.zremrangebyscore(WORKERS, 0, now - RETENTION_SECONDS)
        pipe.execute()


async def list_workers(
    client: Any, timeout: float = 15.0, include_dead: bool = False
) -> list[WorkerInfo]:
    """Workers that beat within `timeout` seconds (and, if asked, those that stopped)."""
    now = time.time()
    low = now - (RETENTION_SECONDS if include_dead else timeout)
    ids = await client.zrangebyscore(WORKERS, low, "+inf")
    if not ids:
        return []
    raw = await client.mget([_key(i.decode() if isinstance(i, bytes) else i) for i in ids])
    out = []
    for wid, blob in zip(ids, raw, strict=True):
        if blob is None:
            continue
        d = json.loads(blob)
        out.append(
            WorkerInfo(
                id=wid.decode() if isinstance(wid, bytes) else wid,
                hostname=d["hostname"],
                pid=int(d["pid"]),
                queues=list(d["queues"]),
                last_beat=float(d["last_beat"]),
                alive=now - float(d["last_beat"]) <= timeout,
                in_flight=list(d["in_flight"]),
            )
        )
    return sorted(out, key=lambda w: (not w.alive, w.id))
