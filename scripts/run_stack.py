"""`make run`: the whole local stack, printed endpoints, stopped cleanly on Ctrl-C.

Starts a local Redis (when NEURAL_REDIS_URL is unset), then every service built so far and
its Dramatiq worker. Data lives under NEURAL_DATA_DIR (default .run/): a SQLite database
unless NEURAL_DATABASE_URL is set, and the artifact storage.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# (name, server module, Dramatiq worker module or None, worker threads, default port)
SERVICES = [
    ("tracker", "services.tracker", None, 0, 50053),
    ("compiler", "services.compiler", "services.compiler.worker", 2, 50051),
    # one training at a time per worker process: a job uses every core it is given
    ("trainer", "services.trainer", "services.trainer.worker", 1, 50052),
]
WORKER_METRICS_PORT = 9191  # Dramatiq's Prometheus exporter in the training worker


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def main() -> int:
    env = dict(os.environ)
    data = Path(env.setdefault("NEURAL_DATA_DIR", str(ROOT / ".run"))).resolve()
    data.mkdir(parents=True, exist_ok=True)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    # Workers act for a job's owner with short-lived tokens signed by this secret.
    env.setdefault("NEURAL_JWT_SECRET", secrets.token_urlsafe(32))
    env.setdefault("dramatiq_prom_port", str(WORKER_METRICS_PORT))
    # an idle worker polls Redis at least this often (ms): Dramatiq's default of 1 s would
    # add up to a second between a job's submit and its start
    env.setdefault("dramatiq_worker_timeout", "100")
    for name, *_, default_port in SERVICES:  # how the services find each other
        port = env.get(f"NEURAL_{name.upper()}_PORT", str(default_port))
        env.setdefault(f"NEURAL_{name.upper()}_ADDRESS", f"127.0.0.1:{port}")
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = open(data / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # Ctrl-C reaches only us
        procs.append((name, proc))
        return proc

    def stop_all() -> None:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            print(f"stopped {name}", flush=True)

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
            redis = start(
                "redis",
                [
                    server,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--dir",
                    str(data),
                ],
            )
            if not wait_port(port, redis, 15):
                print(f"local Redis did not start (see {data / 'redis.log'})", file=sys.stderr)
                return 1
            env["NEURAL_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
        endpoints = []
        for name, module, worker, threads, default_port in SERVICES:
            port = int(env.get(f"NEURAL_{name.upper()}_PORT", str(default_port)))
            proc = start(name, [sys.executable, "-m", module])
            if worker:
                if name == "trainer":  # jobs at once per training worker, from the settings
                    threads = int(env.get("NEURAL_WORKER_THREADS", threads))
                start(
                    f"{name}-worker",
                    [str(BIN / "dramatiq"), worker, "--processes", "1", "--threads", str(threads)],
                )
            if not wait_port(port, proc):
                print(f"{name} did not start (see {data / (name + '.log')})", file=sys.stderr)
                return 1
            metrics = int(env.get(f"NEURAL_{name.upper()}_METRICS_PORT", str(port + 1000)))
            endpoints.append(
                f"  {name:10s} grpc 127.0.0.1:{port}   metrics http://127.0.0.1:{metrics}/metrics"
            )
        print("Neural platform is running:", flush=True)
        print("\n".join(endpoints))
        print(f"  workers    metrics http://127.0.0.1:{env['dramatiq_prom_port']}/metrics")
        print(f"  redis      {env['NEURAL_REDIS_URL']}")
        print(
            f"  database   {env.get('NEURAL_DATABASE_URL') or 'sqlite: ' + str(data / 'neural.db')}"
        )
        print(f"  logs       {data}/*.log")
        print("Create a key: .venv/bin/python -m service_kit.keys create --name me --role admin")
        print("Ctrl-C stops everything.", flush=True)
        stopping = False

        def on_signal(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stopping:
            dead = [n for n, p in procs if p.poll() is not None]
            if dead:
                print(f"{', '.join(dead)} exited; stopping the stack", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
