"""A real Envoy for a test: the configuration `make run` uses, rendered for this test's ports
(its own listener and admin port, a dynamic base id), in front of the upstreams it names; and
a whole platform behind it (`start_platform`: services, authz and rate limiter as processes on
PostgreSQL and Redis, with API keys to call them)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway import proxy
from gateway.render import UPSTREAMS, dynamic_dir, ensure_dynamic_dir, render
from tests.conftest import ROOT
from tests.services.conftest import (
    REDIS_PORT,
    create_pg_database,
    drop_pg_database,
    free_port,
    redis_url,
)
from tests.waiting import until


@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    admin_port: int
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def access_log(self) -> list[dict]:
        """Envoy's access log: one JSON object per line on its stdout."""
        entries = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def stats(self, prefix: str) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin_port}/stats?filter={prefix}"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        pairs = (line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return {k: int(v) for k, v in pairs if v.isdigit()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_gateway(
    tmp: Path, upstreams: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Gateway:
    """Envoy with `upstreams` (name -> HOST:PORT); an upstream not named points at a port
    nothing listens on, as a service that is down."""
    settings = dict(env or {})
    for name in UPSTREAMS:
        address = upstreams.get(name) or f"127.0.0.1:{free_port()}"
        settings[f"NEURAL_{name.upper()}_ADDRESS"] = address
    port, admin_port = free_port(), free_port()
    settings["NEURAL_GATEWAY_PORT"] = str(port)
    settings["NEURAL_GATEWAY_ADMIN_PORT"] = str(admin_port)
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "envoy.yaml"
    # The deployments' clusters: this gateway's own, unless the caller names the folder its
    # deployer's controller writes to.
    settings.setdefault("NEURAL_ENVOY_DYNAMIC_DIR", str(tmp / "dynamic"))
    ensure_dynamic_dir(dynamic_dir(settings))
    config.write_text(render("local", settings))
    log_path = tmp / "envoy.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            proxy.command(config, concurrency=2, log_level="info"),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gateway = Gateway(proc, port, admin_port, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError("envoy exited:\n" + gateway.log()[-4000:])
        return proxy.ready(admin_port)

    try:
        until(up, 60, "envoy ready")
    except BaseException:
        gateway.stop()
        raise
    return gateway


@dataclass
class Platform:
    gateway: Gateway
    env: dict[str, str]
    ports: dict[str, int]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # the key's name -> the key

    def headers(self, key: str = "user") -> dict[str, str]:
        return {"x-api-key": self.keys[key]}

    def metadata(self, key: str = "user") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.keys[key]}"),)


def serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return status.status == health_pb2.HealthCheckResponse.SERVING


def create_key(env: Mapping[str, str], name: str, role: str, program: Sequence[str] = ()) -> str:
    """A key made offline in the authz service's table, by `program` (by default
    `python -m gateway.authz.keys`; the installed `neural-keys` is the same)."""
    program = program or (sys.executable, "-m", "gateway.authz.keys")
    out = subprocess.run(
        [*program, "create", "--name", name, "--role", role],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))


@contextmanager
def start_platform(
    tmp: Path,
    servers: Mapping[str, str],
    redis_db: int,
    keys: Mapping[str, str],
    env: Mapping[str, str] | None = None,
    processes: Mapping[str, str] | None = None,
) -> Iterator[Platform]:
    """`servers` (name -> module run with `python -m`) on a fresh PostgreSQL database and Redis
    db `redis_db` (flushed), behind a real Envoy; `keys` (name -> role) made offline before
    they start; `env` added to every process's settings (e.g. NEURAL_RATELIMIT_CONFIG);
    `processes` (name -> module) started beside them, serving no port (the deployer's
    controller, which writes the deployments' clusters where this Envoy reads them)."""
    database, url = asyncio.run(create_pg_database())
    redis.Redis(port=REDIS_PORT, db=redis_db).flushdb()
    subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "generate", str(tmp / "keys")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    ports = {name: free_port() for name in servers}
    settings = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATABASE_URL": url,
        "NEURAL_REDIS_URL": redis_url(redis_db),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_STORAGE_DIR": str(tmp / "storage"),
        "NEURAL_PAGE_TOKEN_SECRET": "gateway-e2e-secret-" + "x" * 32,
        "NEURAL_AUTHZ_PRIVATE_KEY_FILE": str(tmp / "keys" / "authz_private.pem"),
        "NEURAL_AUTHZ_PUBLIC_KEY_FILE": str(tmp / "keys" / "authz_public.pem"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "NEURAL_ENVOY_DYNAMIC_DIR": str(tmp / "envoy-dynamic"),
        **(env or {}),
    }
    for name, port in ports.items():
        settings[f"NEURAL_{name.upper()}_PORT"] = str(port)
        settings[f"NEURAL_{name.upper()}_METRICS_PORT"] = str(free_port())
        settings[f"NEURAL_{name.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen] = {}
    gateway = None
    try:
        made = {name: create_key(settings, name, role) for name, role in keys.items()}
        for name, module in servers.items():
            with open(tmp / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=settings,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for name, port in ports.items():

            def up(name: str = name, port: int = port) -> bool:
                if procs[name].poll() is not None:
                    log = (tmp / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{name} exited:\n{log}")
                return serving(port)

            until(up, 90, f"{name} serving")
        for name, module in (processes or {}).items():
            with open(tmp / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", module],
                    env=settings,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        upstreams = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        dynamic = {"NEURAL_ENVOY_DYNAMIC_DIR": settings["NEURAL_ENVOY_DYNAMIC_DIR"]}
        gateway = start_gateway(tmp / "envoy", upstreams, {**(env or {}), **dynamic})
        yield Platform(gateway, settings, ports, procs, made)
    finally:
        if gateway is not None:
            gateway.stop()
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        asyncio.run(drop_pg_database(database))
