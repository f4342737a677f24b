"""Start the compiler server and its Dramatiq worker as real processes, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import tokens
from tests.conftest import ROOT
from tests.services.conftest import (
    REDIS_PORT,
    create_pg_database,
    drop_pg_database,
    free_port,
    redis_url,
)

VENV_BIN = Path(sys.executable).parent


@dataclass
class Stack:
    env: dict[str, str]
    port: int
    metrics_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: Path = Path()
    # Internal tokens signed for the tests, by label (see pg_stack)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, name: str, args: list[str], own_group: bool = False) -> None:
        """Start a process; with `own_group`, in a process group of its own (see kill_group)."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            args,
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=own_group,
        )

    def start_server(self, module: str = "services.compiler") -> None:
        self.start("server", [sys.executable, "-m", module])

    def start_worker(self, own_group: bool = False) -> None:
        self.start(
            "worker",
            [
                str(VENV_BIN / "dramatiq"),
                "services.compiler.worker",
                "--processes",
                "1",
                "--threads",
                "2",
            ],
            own_group,
        )

    def kill_group(self, name: str) -> None:
        """SIGKILL a process started with `own_group` and everything in its group (the dramatiq
        CLI forks its worker processes), as an out-of-memory kill or a lost machine would."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def sign_token(self, name: str, role: str) -> str:
        """A token naming `name` with `role`, as the gateway's authz service would sign it."""
        return tokens.sign(name, role)

    def meta(self, label: str) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying the token of `keys[label]`."""
        return tokens.meta(self.keys[label])

    def wait_serving(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.procs["server"].poll() is not None:
                    raise RuntimeError("server exited:\n" + self.log("server"))
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError("server not serving:\n" + self.log("server"))

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self, name: str, timeout: float = 30) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def make_stack(tmp: Path, database_url: str, redis_db: int, service: str = "compiler") -> Stack:
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATABASE_URL": database_url,
        "NEURAL_REDIS_URL": redis_url(redis_db),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_STORAGE_DIR": str(tmp / "storage"),
        f"NEURAL_{service.upper()}_PORT": str(port),
        f"NEURAL_{service.upper()}_METRICS_PORT": str(metrics),
        "NEURAL_PAGE_TOKEN_SECRET": "e2e-secret-" + "x" * 32,
        # Services trust only tokens signed with the test run's key (tests/tokens.py).
        "NEURAL_AUTHZ_PUBLIC_KEY_FILE": tokens.public_key_file(),
        "NEURAL_MAX_MESSAGE_BYTES": str(4 * 1024 * 1024),
        "NEURAL_GRACE_SECONDS": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NEURAL_WEBHOOK_ALLOW_PRIVATE": "1",  # the tests' receivers listen on loopback
    }
    stack = Stack(env, port, metrics, logs=tmp)
    return stack


@contextmanager
def pg_stack(
    tmp: Path,
    redis_db: int,
    service: str = "compiler",
    env: Mapping[str, str] | None = None,
    keys: Mapping[str, tuple[str, str]] | None = None,
    worker: bool = False,
    own_group: bool = False,
    flush: bool = True,
) -> Iterator[Stack]:
    """A serving `service` on a fresh PostgreSQL database and Redis db `redis_db`.

    `env` is added to the processes' environment; `keys` maps a label to the (name, role) of
    a principal, whose signed token is stored in `Stack.keys` under that label (the name is
    what tests assert as owners; `Stack.meta(label)` is the call metadata). `worker` also
    starts the compiler's Dramatiq worker, in a process group of its own with `own_group`
    (then killed with its group at the end). `flush=False` leaves the Redis db alone, for a
    stack beside another on the same db.
    """
    name, url = asyncio.run(create_pg_database())
    try:
        if flush:
            redis.Redis(port=REDIS_PORT, db=redis_db).flushdb()
        s = make_stack(tmp, url, redis_db, service)
        s.env.update(env or {})
        s.keys = {label: s.sign_token(*who) for label, who in (keys or {}).items()}
        try:
            s.start_server(f"services.{service}")
            if worker:
                s.start_worker(own_group)
            s.wait_serving()
            yield s
        finally:
            if own_group and "worker" in s.procs:
                s.kill_group("worker")
            s.stop_all()
    finally:
        asyncio.run(drop_pg_database(name))
