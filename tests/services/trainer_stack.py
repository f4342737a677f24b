"""The trainer's whole path as real processes: a Redis of its own (append-only, so it can be
restarted without losing the queue), the tracker, the compiler, the trainer and its workers,
on PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests import tokens
from tests.conftest import ROOT
from tests.services.conftest import free_port
from tests.services.stack import VENV_BIN, Stack, make_stack


class TrainerStack(Stack):
    ports: dict[str, int]
    redis_port: int
    workers: int = 0

    def start_redis(self) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is installed by make setup"
        self.start(
            "redis",
            [
                server,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.logs),
            ],
        )
        client = redis.Redis(port=self.redis_port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.1)
        raise TimeoutError("test Redis did not start:\n" + self.log("redis"))

    def start_service(self, name: str) -> None:
        self.start(name, [sys.executable, "-m", f"services.{name}"])

    def wait_service(self, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address_of(name)) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited:\n" + self.log(name))
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{name} not serving:\n" + self.log(name))

    def start_authz(self) -> None:
        """The authz service, where the trainer's workers get tokens to act for a job's owner,
        and the workers' key (an admin key scoped to IssueDelegatedToken)."""
        port = free_port()
        self.ports["authz"] = port
        self.env.update(
            {
                "NEURAL_AUTHZ_PORT": str(port),
                "NEURAL_AUTHZ_METRICS_PORT": str(free_port()),
                "NEURAL_AUTHZ_ADDRESS": f"127.0.0.1:{port}",
                "NEURAL_AUTHZ_PRIVATE_KEY_FILE": tokens.private_key_file(),
                "NEURAL_SERVICE_KEY_FILE": str(self.logs / "worker.key"),
            }
        )
        run_quiet(
            [
                *(sys.executable, "-m", "gateway.authz.keys", "create", "--name", "workers"),
                *("--role", "admin", "--scope", "/neural.v1.AuthService/IssueDelegatedToken"),
                *("--key-file", self.env["NEURAL_SERVICE_KEY_FILE"]),
            ],
            self.env,
        )
        self.start("authz", [sys.executable, "-m", "gateway.authz"])
        self.wait_service("authz")

    def start_trainer_worker(self) -> str:
        """A training worker; the authz service it needs is started first, once."""
        if "authz" not in self.ports:
            self.start_authz()
        self.workers += 1
        name = f"worker{self.workers}"
        self.start(
            name,
            [
                str(VENV_BIN / "dramatiq"),
                "services.trainer.worker",
                "--processes",
                "1",
                "--threads",
                "1",
            ],
        )
        return name

    def kill(self, name: str) -> None:
        """SIGKILL a process and its children (the dramatiq CLI forks its worker processes)."""
        proc = self.procs.pop(name)
        for child in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()

    def address_of(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


def make_trainer_stack(tmp: Path, database_url: str) -> TrainerStack:
    base = make_stack(tmp, database_url, 0, "trainer")
    stack = TrainerStack(base.env, base.port, base.metrics_port, logs=tmp)
    stack.redis_port = free_port()
    stack.ports = {"trainer": base.port, "tracker": free_port(), "compiler": free_port()}
    env = stack.env
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    env["NEURAL_REDIS_URL"] = f"redis://127.0.0.1:{stack.redis_port}/0"
    for name, port in stack.ports.items():
        env[f"NEURAL_{name.upper()}_PORT"] = str(port)
        env[f"NEURAL_{name.upper()}_METRICS_PORT"] = str(free_port())
        env[f"NEURAL_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    # a killed worker's job goes back to the queue within seconds, not minutes
    env["NEURAL_BROKER_HEARTBEAT_TIMEOUT_MS"] = "3000"
    env["NEURAL_BROKER_MAINTENANCE_CHANCE"] = "500000"
    env["NEURAL_WEBHOOK_MIN_BACKOFF_MS"] = "100"
    env["NEURAL_MAX_UPLOAD_BYTES"] = str(3 * 1024 * 1024)
    env["dramatiq_prom_port"] = str(free_port())
    env["dramatiq_worker_timeout"] = "100"
    env["dramatiq_prom_db"] = str(tmp / "prometheus")
    (tmp / "prometheus").mkdir(exist_ok=True)
    return stack


def run_quiet(args: list[str], env: dict[str, str]) -> str:
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout


def children(pid: int) -> list[int]:
    """Every descendant of `pid`, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found
