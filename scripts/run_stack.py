"""`make run`: the whole local stack, supervised, printed endpoints, stopped cleanly on Ctrl-C.

Starts a local Redis (when NEURAL_REDIS_URL is unset), the gateway's own services (authz and
rate limit), every service built so far and its Dramatiq worker, and last Envoy, the gateway
(127.0.0.1:NEURAL_GATEWAY_PORT, 8080; the web console at its `/`), on gateway/envoy.yaml
rendered for these addresses into the data folder. Data lives under NEURAL_DATA_DIR (default
.run/): a SQLite database unless NEURAL_DATABASE_URL is set, the artifact storage, the authz
service's signing keys (keys/), each process's log, and `stack.json`, which says where this
stack listens (its addresses, Redis and database) for as long as it runs; `make demo` finds
the stack through that file only.

The tracker runs as a group of NEURAL_TRACKER_PROCESSES server processes on its port (2 by
default here; service_kit.process_group): the group's parent is the process supervised, and
it exits when one of its servers dies, to be restarted as any other.

Supervision: a process that exits while the stack runs is logged and started again after a
delay that doubles from 1 s up to 60 s, and falls back to 1 s once the process has stayed up
for a minute. Ctrl-C (or SIGTERM) stops the workers first, then the services, then Redis, so
nothing loses its broker while it is still running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the gateway package, when run as `python scripts/run_stack.py`
from gateway import proxy  # noqa: E402 - needs the line above

BIN = Path(sys.executable).parent
# The gateway's services (name, module, default port).
GATEWAY_SERVICES = [
    ("authz", "gateway.authz", 50055),
    ("ratelimit", "gateway.ratelimit", 50056),
]
GATEWAY_PORT = 8080
GATEWAY_ADMIN_PORT = 9901
# (name, server module, Dramatiq worker module or None, worker threads, default port)
SERVICES = [
    ("tracker", "services.tracker", None, 0, 50053),
    ("compiler", "services.compiler", "services.compiler.worker", 2, 50051),
    # one training at a time per worker process: a job uses every core it is given
    ("trainer", "services.trainer", "services.trainer.worker", 1, 50052),
    ("deployer", "services.deployer", None, 0, 50054),
]
# Processes that run beside the services (name, module): the deployer's controller starts the
# model replicas (its children: they end with it) and writes Envoy's deployment clusters.
CONTROLLERS = [("deployer-controller", "services.deployer.controller")]
# Server processes of the tracker in a local stack: two show the group's behaviour (one port,
# summed metrics) without a process per core of a machine that also runs every other service
# (and, on SQLite, whose writes take turns on one file anyway).
TRACKER_PROCESSES = 2
WORKER_METRICS_PORT = 9191  # Dramatiq's Prometheus exporter in the training worker
# The workers' API key: its name, and the one RPC it may call (see service_kit.delegation).
WORKER_KEY = "platform-workers"
DELEGATION = "/neural.v1.AuthService/IssueDelegatedToken"
STACK_FILE = "stack.json"

# Tiers, stopped from the highest down: workers need services and Redis, services need Redis.
REDIS, SERVICE, WORKER = 0, 1, 2
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_S = 60.0  # up this long: the next crash restarts after FIRST_BACKOFF_S again
STOP_TIMEOUT_S = 20.0
POLL_S = 0.2

log = logging.getLogger("run_stack")


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(POLL_S)
    return False


def ports_in_use(wanted: dict[int, str]) -> list[str]:
    """Which of the stack's ports (port -> what listens there) another process holds: a
    second stack on the same ports would otherwise look up (the first one answers) while its
    own services fail to bind and restart forever."""
    taken = []
    for port, what in sorted(wanted.items()):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                taken.append(f"{port} ({what})")
    return taken


def stack_ports(env: dict[str, str], services: list[tuple[str, int]]) -> dict[int, str]:
    """Every port this stack listens on, from the same settings the processes read."""
    wanted: dict[int, str] = {}
    for name, default_port in services:
        port = int(env.get(f"NEURAL_{name.upper()}_PORT", str(default_port)))
        wanted[port] = f"{name}, NEURAL_{name.upper()}_PORT"
        metrics = int(env.get(f"NEURAL_{name.upper()}_METRICS_PORT", str(port + 1000)))
        wanted[metrics] = f"{name} metrics, NEURAL_{name.upper()}_METRICS_PORT"
    wanted[int(env.get("NEURAL_GATEWAY_PORT", str(GATEWAY_PORT)))] = "gateway, NEURAL_GATEWAY_PORT"
    admin = int(env.get("NEURAL_GATEWAY_ADMIN_PORT", str(GATEWAY_ADMIN_PORT)))
    wanted[admin] = "gateway admin, NEURAL_GATEWAY_ADMIN_PORT"
    wanted[int(env["dramatiq_prom_port"])] = "worker metrics, dramatiq_prom_port"
    if not env.get("NEURAL_REDIS_URL"):
        redis_port = int(env.get("NEURAL_LOCAL_REDIS_PORT", "6390"))
        wanted[redis_port] = "local Redis, NEURAL_LOCAL_REDIS_PORT"
    return wanted


@dataclass
class Child:
    """One supervised process: how to start it, and its restart schedule."""

    name: str
    args: list[str]
    tier: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: float = FIRST_BACKOFF_S
    restarts: int = 0
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> subprocess.Popen:
        if self._log is None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process
        # a session of its own: Ctrl-C reaches only the supervisor, and the process group
        # (a Dramatiq worker's children included) can be ended as one
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("started %s (pid %d)", self.name, self.proc.pid)
        return self.proc

    def check(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when its time has come."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            if now >= self.started_at + STABLE_S:
                self.backoff = FIRST_BACKOFF_S
            return
        self._end_group(signal.SIGKILL)  # children the crashed process left behind
        delay = self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)
        self.restarts += 1
        log.warning(
            "%s exited with status %s; restarting in %.0f s (restart %d, log %s)",
            self.name,
            code,
            delay,
            self.restarts,
            self.log_path,
        )
        self.restart_at = now + delay

    def _end_group(self, sig: signal.Signals) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def terminate(self) -> None:
        self.restart_at = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killed", self.name, STOP_TIMEOUT_S)
                self.proc.kill()
                self.proc.wait()
            self._end_group(signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        print(f"stopped {self.name}", flush=True)


class Stack:
    def __init__(self, env: dict[str, str], data: Path) -> None:
        self.env = env
        self.data = data
        self.children: list[Child] = []

    def add(self, name: str, args: list[str], tier: int) -> Child:
        child = Child(name, args, tier, self.env, self.data / f"{name}.log")
        self.children.append(child)
        child.start()
        return child

    def supervise(self, stopping: list[bool]) -> None:
        while not stopping:
            now = time.monotonic()
            for child in self.children:
                child.check(now)
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Workers first, then services, then Redis: each tier after the one above is down."""
        for tier in (WORKER, SERVICE, REDIS):
            members = [c for c in reversed(self.children) if c.tier == tier]
            for child in members:
                child.terminate()
            for child in members:
                child.wait_stopped()


def write_stack_file(path: Path, description: dict[str, object]) -> None:
    """Atomically, readable by its owner only (it names the database)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2)
    os.replace(tmp, path)


def remove_stack_file(path: Path) -> None:
    """Only when it is this process's: a second `make run` refused at start keeps the first's."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def main() -> int:
    fmt = "%(asctime)s run_stack %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    env = dict(os.environ)
    data = Path(env.setdefault("NEURAL_DATA_DIR", str(ROOT / ".run"))).resolve()
    env["NEURAL_DATA_DIR"] = str(data)
    data.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(data / "run_stack.log")
    to_file.setFormatter(logging.Formatter(fmt))
    logging.getLogger().addHandler(to_file)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # List/Search page tokens are signed with this: they stay valid across the services'
    # restarts within this run.
    env.setdefault("NEURAL_PAGE_TOKEN_SECRET", secrets.token_urlsafe(32))
    env.setdefault("NEURAL_DATABASE_URL", f"sqlite+aiosqlite:///{data / 'neural.db'}")
    env.setdefault("dramatiq_prom_port", str(WORKER_METRICS_PORT))
    env.setdefault("NEURAL_TRACKER_PROCESSES", str(TRACKER_PROCESSES))
    # where the deployer's controller writes the deployments' clusters and Envoy reads them
    env.setdefault("NEURAL_ENVOY_DYNAMIC_DIR", str(data / "envoy-dynamic"))
    # an idle worker polls Redis at least this often (ms): Dramatiq's default of 1 s would
    # add up to a second between a job's submit and its start
    env.setdefault("dramatiq_worker_timeout", "100")
    gateway_services = GATEWAY_SERVICES
    addresses = {}
    # how the services (and Envoy's rendered configuration) find each other
    for name, *_, default_port in [*gateway_services, *SERVICES]:
        port = env.get(f"NEURAL_{name.upper()}_PORT", str(default_port))
        addresses[name] = env.setdefault(f"NEURAL_{name.upper()}_ADDRESS", f"127.0.0.1:{port}")
    gateway_port = int(env.get("NEURAL_GATEWAY_PORT", str(GATEWAY_PORT)))
    admin_port = int(env.get("NEURAL_GATEWAY_ADMIN_PORT", str(GATEWAY_ADMIN_PORT)))
    servers = [(name, port) for name, *_, port in [*gateway_services, *SERVICES]]
    taken = ports_in_use(stack_ports(env, servers))
    if taken:
        print(
            f"ports in use: {', '.join(taken)}. Is another `make run` running (see "
            f"{data / STACK_FILE})? Stop it, or move this stack with the settings named.",
            file=sys.stderr,
        )
        return 1
    stack = Stack(env, data)
    stack_file = data / STACK_FILE

    try:
        if not env.get("NEURAL_REDIS_URL"):
            server = shutil.which("redis-server")
            if server is None:
                print(
                    "redis-server not found: run `make setup` or set NEURAL_REDIS_URL",
                    file=sys.stderr,
                )
                return 1
            port = int(env.get("NEURAL_LOCAL_REDIS_PORT", "6390"))
            redis_args = [server, "--port", str(port), "--bind", "127.0.0.1"]
            redis_args += ["--save", "", "--appendonly", "yes", "--dir", str(data)]
            redis = stack.add("redis", redis_args, REDIS)
            assert redis.proc is not None
            if not wait_port(port, redis.proc, 15):
                print(f"local Redis did not start (see {data / 'redis.log'})", file=sys.stderr)
                return 1
            env["NEURAL_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        # The authz service signs the internal tokens, the services check them: one keypair
        # per data folder, kept across runs. The trainer's worker gets a key of its own, an
        # admin key scoped to IssueDelegatedToken (how it acts for a job's owner), reissued
        # at each start.
        keys = data / "keys"
        subprocess.run(
            [sys.executable, "-m", "gateway.authz.keys", "generate", str(keys)],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        env.setdefault("NEURAL_AUTHZ_PRIVATE_KEY_FILE", str(keys / "authz_private.pem"))
        env.setdefault("NEURAL_AUTHZ_PUBLIC_KEY_FILE", str(keys / "authz_public.pem"))
        worker_key = Path(env.setdefault("NEURAL_SERVICE_KEY_FILE", str(keys / "worker.key")))
        subprocess.run(
            [
                *(sys.executable, "-m", "gateway.authz.keys", "create", "--name", WORKER_KEY),
                *("--role", "admin", "--scope", DELEGATION, "--replace"),
                *("--key-file", str(worker_key)),
            ],
            env=env,
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        endpoints = []
        for name, module, default_port in gateway_services:
            port = int(env.get(f"NEURAL_{name.upper()}_PORT", str(default_port)))
            server_proc = stack.add(name, [sys.executable, "-m", module], SERVICE).proc
            assert server_proc is not None
            if not wait_port(port, server_proc):
                print(f"{name} did not start (see {data / (name + '.log')})", file=sys.stderr)
                return 1
            endpoints.append(f"  {name:10s} grpc 127.0.0.1:{port}")
        for name, module, worker, threads, default_port in SERVICES:
            port = int(env.get(f"NEURAL_{name.upper()}_PORT", str(default_port)))
            server_proc = stack.add(name, [sys.executable, "-m", module], SERVICE).proc
            if worker:
                if name == "trainer":  # jobs at once per training worker, from the settings
                    threads = int(env.get("NEURAL_WORKER_THREADS", threads))
                stack.add(
                    f"{name}-worker",
                    [str(BIN / "dramatiq"), worker, "--processes", "1", "--threads", str(threads)],
                    WORKER,
                )
            assert server_proc is not None
            if not wait_port(port, server_proc):
                print(f"{name} did not start (see {data / (name + '.log')})", file=sys.stderr)
                return 1
            metrics = int(env.get(f"NEURAL_{name.upper()}_METRICS_PORT", str(port + 1000)))
            group = (
                f"   ({env['NEURAL_TRACKER_PROCESSES']} processes, NEURAL_TRACKER_PROCESSES)"
                if name == "tracker"
                else ""
            )
            endpoints.append(
                f"  {name:10s} grpc 127.0.0.1:{port}   metrics http://127.0.0.1:{metrics}/metrics"
                + group
            )
        for name, module in CONTROLLERS:
            stack.add(name, [sys.executable, "-m", module], WORKER)
        # Envoy last: its upstreams are up, so its first health checks pass
        config = data / "envoy.yaml"
        subprocess.run(
            [sys.executable, "-m", "gateway.render", "--target", "local", "-o", str(config)],
            env=env,
            cwd=ROOT,
            check=True,
        )
        envoy = stack.add("envoy", proxy.command(config), SERVICE).proc
        assert envoy is not None
        deadline = time.monotonic() + 60
        while not proxy.ready(admin_port):
            if envoy.poll() is not None or time.monotonic() > deadline:
                print(f"envoy did not start (see {data / 'envoy.log'})", file=sys.stderr)
                return 1
            time.sleep(POLL_S)
        write_stack_file(
            stack_file,
            {
                "pid": os.getpid(),
                "data_dir": str(data),
                "gateway": f"127.0.0.1:{gateway_port}",
                "addresses": addresses,
                "redis_url": env["NEURAL_REDIS_URL"],
                "database_url": env["NEURAL_DATABASE_URL"],
            },
        )
        database = env["NEURAL_DATABASE_URL"]
        if database.startswith("sqlite"):
            database = "sqlite: " + database.split(":///", 1)[-1]
        print("Neural platform is running:", flush=True)
        print(
            f"  gateway    http://127.0.0.1:{gateway_port} (REST, gRPC, gRPC-Web; "
            f"docs at /docs)   admin http://127.0.0.1:{admin_port} (this machine only)"
        )
        # Envoy serves the console's build (gateway/console.py), or a page saying to build it.
        built = (ROOT / "web" / "dist" / "index.html").is_file()
        print(
            f"  console    http://127.0.0.1:{gateway_port}/ (the web console: sign in with a key)"
            if built
            else f"  console    http://127.0.0.1:{gateway_port}/ (not built: run `make setup`)"
        )
        print("\n".join(endpoints))
        print(f"  workers    metrics http://127.0.0.1:{env['dramatiq_prom_port']}/metrics")
        print(f"  redis      {env['NEURAL_REDIS_URL']}")
        print(f"  database   {database}")
        print(f"  logs       {data}/*.log (restarts in run_stack.log)")
        print(f"  settings   {stack_file} (how `make demo` finds this stack)")
        print("Create a key: .venv/bin/neural-keys create --name me --role admin")
        print("Ctrl-C stops everything.", flush=True)
        stopping: list[bool] = []

        def on_signal(*_: object) -> None:
            stopping.append(True)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        stack.supervise(stopping)
        return 0
    finally:
        remove_stack_file(stack_file)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
