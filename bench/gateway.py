"""The gateway's cost: the compiler's Validate through Envoy against straight to it, in one run.

One compiler, the authz and rate-limit services and two Envoys (the configuration `make run`
uses, rendered for this run's ports) run as their own processes on loopback. The same client
calls Validate on a small program at concurrency 1 and 64:

- straight to the compiler over gRPC with an internal token (x-neural-principal) signed by
  this run's authz keypair, which the compiler checks with the public key: the baseline;
- through Envoy over gRPC, and over REST (`POST /v1/programs:validate`, JSON), each with
  ext_authz and the global rate limit on, with an API key of the authz service's own (a
  limits file whose limits no call here reaches, so every call is decided in Redis and
  admitted; the compiler verifies the internal token authz signed);
- the same two through a second Envoy whose chain lacks ext_authz and the rate limit, and
  which lets the client's own internal token through (the compiler checks it, as when called
  directly): what Envoy alone costs;
- `GET /docs` from that second Envoy (a small page Envoy answers itself): the floor of the
  REST client and Envoy's HTTP/1.1 alone, no service behind.

Prints requests per second, p50 and p99 per path, each path's requests per second as a ratio
to the direct path, and the p50 that ext_authz plus the rate limit add (with minus without).
The clients are Python (grpc.aio, httpx) in one process on the same CPUs as everything else:
on a small machine the REST rows are bound by httpx as much as by Envoy (see the floor). Each
REST call in flight has an httpx client of one connection to itself: one pool of 64 spent
several ms of the client's CPU per request at concurrency 64 (its scheduling grows with its
connections), which measured httpx rather than the gateway.
Then, at concurrency 64, the CPU time each process spent per request of each path (Linux
/proc; the client is this process): on a small machine a path's requests per second are
bound by the sum. Last, how the gateway's calls were decided (Envoy's ext_authz and
ratelimit counters, the rate-limit service's own): a decision that timed out or failed open
was not measured.
The compiler and authz use SQLite in a temporary folder; Redis is NEURAL_REDIS_URL, else
127.0.0.1:6379 db 11.

    .venv/bin/python bench/gateway.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import yaml
from ports import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
# The gateway package lives at the repository root; first in the path, so that `gateway` is
# that package and not this file (bench/ is the script's own folder, searched next).
sys.path.insert(0, str(ROOT))

SOURCE = 'network Small {\n  input: (16)\n  layers:\n    Dense(32, "relu")\n    Output(4)\n}\n'
# Far above what this run sends: every call is counted in Redis and admitted.
LIMITS = {
    "domain": "neural",
    "window_seconds": 1,
    "roles": {"user": {"requests": 10_000_000}},
    "default_role": "user",
    "anonymous": {"requests": 10_000_000},
}
# The filters `bare` Envoy runs without.
AUTH_AND_RATE_LIMIT = ("envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit")
TOKEN_SECONDS = 4 * 3600  # the direct and bare paths' internal token outlives the run
CREATE_KEY = ["create", "--name", "bench", "--role", "user"]  # the authz service's API key
ROUNDS = 2  # each path's calls in rounds taken in turn, so a busy moment hits every path
TARGETS = {"grpc": 0.8, "rest": 0.6, "added_p50_ms": 1.5}  # the targets

Call = Callable[[], Awaitable[None]]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if q == 0.5:
            return statistics.median(ordered) * 1e3
        return ordered[max(0, int(len(ordered) * q) - 1)] * 1e3


class Clients:
    """httpx clients of one keep-alive connection each, one per call in flight."""

    def __init__(self, base_url: str, n: int, stack: contextlib.AsyncExitStack) -> None:
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.idle = [httpx.AsyncClient(base_url=base_url, limits=one) for _ in range(n)]
        for client in self.idle:
            stack.push_async_callback(client.aclose)

    async def request(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        client = self.idle.pop()  # never empty: at most n calls are in flight
        try:
            return await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        finally:
            self.idle.append(client)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User and system CPU time so far of each process, and of this one (the client)."""
    tick = os.sysconf("SC_CLK_TCK")
    used = {"client": time.process_time()}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / tick
    return used


async def measure(
    call: Call, total: int, concurrency: int, result: Result, pids: dict[str, int]
) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await call()
            result.latencies.append(time.perf_counter() - t)

    cpu = cpu_seconds(pids)
    started = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    result.wall += time.perf_counter() - started
    for name, after in cpu_seconds(pids).items():
        result.cpu[name] = result.cpu.get(name, 0.0) + after - cpu[name]


def envoy_config(tmp: Path, name: str, settings: dict[str, str], bare: bool) -> Path:
    from gateway.render import render

    config = yaml.safe_load(render("local", settings))
    if bare:
        manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        chain = manager["typed_config"]["http_filters"]
        manager["typed_config"]["http_filters"] = [
            f for f in chain if f["name"] not in AUTH_AND_RATE_LIMIT
        ]
        # No ext_authz to set x-neural-principal: the client's own internal token goes through.
        manager["typed_config"].pop("early_header_mutation_extensions", None)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_envoy(
    tmp: Path, name: str, upstreams: dict[str, int], bare: bool
) -> tuple[subprocess.Popen, int, int]:
    """Envoy on `name`'s configuration: (process, port, admin port)."""
    from gateway import proxy
    from gateway.render import UPSTREAMS, ensure_dynamic_dir

    port, admin = free_port(), free_port()
    # The deployments' cluster file: this run's own (none), not the one of `make run`'s .run/.
    dynamic = tmp / "envoy-dynamic"
    ensure_dynamic_dir(dynamic)
    settings = {
        "NEURAL_GATEWAY_PORT": str(port),
        "NEURAL_GATEWAY_ADMIN_PORT": str(admin),
        "NEURAL_ENVOY_DYNAMIC_DIR": str(dynamic),
    }
    for upstream in UPSTREAMS:  # one not started (trainer, ...) is a port nothing listens on
        address = f"127.0.0.1:{upstreams.get(upstream) or free_port()}"
        settings[f"NEURAL_{upstream.upper()}_ADDRESS"] = address
    config = envoy_config(tmp, name, settings, bare)
    # Its JSON access log is part of the configuration measured; written where no one reads it.
    proc = subprocess.Popen(
        proxy.command(config), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not proxy.ready(admin):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"envoy ({name}) did not start; check with envoy --mode validate")
        time.sleep(0.1)
    return proc, port, admin


def decisions(admin: int, metrics: int) -> str:
    """The gateway's decisions by outcome: Envoy's (ext_authz: ok, denied, error; ratelimit:
    ok, over_limit, error, failure_mode_allowed) and the rate-limit service's (admitted,
    failed_open, ...)."""
    counted: dict[str, int] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=5) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(": ")
            found = re.fullmatch(r"http\.gateway\.ext_authz\.(\w+)", name) or re.fullmatch(
                r"cluster\.\w+\.ratelimit\.(\w+)", name
            )
            if found and value.isdigit() and int(value):
                key = f"{name.split('.')[-2]} {found.group(1)}"
                counted[key] = counted.get(key, 0) + int(value)
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
        for found in re.finditer(
            r'^neural_ratelimit_decisions_total\{outcome="(\w+)"\} ([0-9.e+]+)$',
            r.read().decode(),
            re.MULTILINE,
        ):
            if float(found.group(2)):
                counted[f"rate-limit service {found.group(1)}"] = int(float(found.group(2)))
    return ", ".join(f"{key} {n}" for key, n in sorted(counted.items()))


async def until_answered(call: Call, what: str, timeout: float = 60) -> None:
    """The first calls may meet a cluster whose first health check has not yet passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await call()
            return
        except (grpc.RpcError, httpx.HTTPError, AssertionError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer within {timeout} s") from None
            await asyncio.sleep(0.2)


async def run(
    requests: int, ports: dict[str, int], keys: dict[str, str], pids: dict[str, int]
) -> None:
    """`keys`: an internal token for the direct and bare paths ("service") and an API key of
    the authz service's ("authz")."""
    from neural.v1 import compiler_pb2, compiler_pb2_grpc
    from service_kit.internal_token import HEADER as PRINCIPAL_HEADER

    request = compiler_pb2.ValidateRequest(source=SOURCE)
    body = json.dumps({"source": SOURCE}).encode()  # encoded once: the client's cost is HTTP's

    def credentials(key: str) -> dict[str, str]:
        if key == keys["service"]:
            return {PRINCIPAL_HEADER: key}
        return {"authorization": f"Bearer {key}"}

    def grpc_call(stub: compiler_pb2_grpc.CompilerServiceStub, key: str) -> Call:
        metadata = tuple(credentials(key).items())

        async def call() -> None:
            reply = await stub.Validate(request, metadata=metadata, timeout=30)
            assert reply.valid

        return call

    def rest_call(client: Clients, key: str) -> Call:
        headers = {**credentials(key), "content-type": "application/json"}

        async def call() -> None:
            r = await client.request("POST", "/v1/programs:validate", content=body, headers=headers)
            assert r.status_code == 200, f"{r.status_code} {r.text}"

        return call

    def floor_call(client: Clients) -> Call:
        async def call() -> None:
            r = await client.request("GET", "/docs")
            assert r.status_code == 200, f"{r.status_code} {r.text[:200]}"

        return call

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['compiler']}") as direct,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['envoy']}") as envoy,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['bare']}") as bare,
        contextlib.AsyncExitStack() as stack,
    ):
        rest = Clients(f"http://127.0.0.1:{ports['envoy']}", 64, stack)
        bare_rest = Clients(f"http://127.0.0.1:{ports['bare']}", 64, stack)
        stub = compiler_pb2_grpc.CompilerServiceStub
        paths = {
            "direct gRPC": grpc_call(stub(direct), keys["service"]),
            "Envoy gRPC": grpc_call(stub(envoy), keys["authz"]),
            "Envoy REST": rest_call(rest, keys["authz"]),
            "Envoy gRPC, no authz/rl": grpc_call(stub(bare), keys["service"]),
            "Envoy REST, no authz/rl": rest_call(bare_rest, keys["service"]),
            "REST floor (GET /docs)": floor_call(bare_rest),
        }
        for name, call in paths.items():
            await until_answered(call, name)
        # The rate limiter decided the gateway's calls, and not the bare gateway's.
        json_type = {"content-type": "application/json"}
        auth = {**credentials(keys["authz"]), **json_type}
        limited = await rest.request("POST", "/v1/programs:validate", content=body, headers=auth)
        auth = {**credentials(keys["service"]), **json_type}
        unlimited = await bare_rest.request(
            "POST", "/v1/programs:validate", content=body, headers=auth
        )
        assert "x-ratelimit-remaining" in limited.headers, "the rate limit did not run"
        assert "x-ratelimit-remaining" not in unlimited.headers, "the bare Envoy limited"

        print(f"Validate, {requests} requests per path and concurrency, loopback, one client")
        print(f"process, {os.cpu_count()} CPUs shared by the client, Envoy and the services")
        print(
            f"{'path':24s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s}"
            f" {'req/s vs direct':>16s}"
        )
        summary = []
        for conc in (1, 64):
            results = {name: Result() for name in paths}
            for call in paths.values():  # warm up: connections open, caches filled
                await asyncio.gather(*(call() for _ in range(min(conc, 64))))
            for _ in range(ROUNDS):
                for name, call in paths.items():
                    await measure(call, requests // ROUNDS, conc, results[name], pids)
            base = results["direct gRPC"].rps
            for name, r in results.items():
                print(
                    f"{name:24s} {conc:4d} {r.rps:8.0f} {r.percentile(0.5):7.2f}"
                    f" {r.percentile(0.99):7.2f} {r.rps / base:15.2f}x"
                )
            summary.append((conc, results))
        print("\nCPU ms per request at concurrency 64 (client, Envoy, services; Redis not counted)")
        for name, r in summary[-1][1].items():
            spent = {k: v * 1e3 / len(r.latencies) for k, v in r.cpu.items() if v > 0}
            shares = ", ".join(f"{k} {v:.2f}" for k, v in sorted(spent.items()) if v >= 0.005)
            print(f"{name:24s} {sum(spent.values()):5.2f}: {shares}")
        print()
        for conc, results in summary:
            base = results["direct gRPC"].rps
            p50 = {name: r.percentile(0.5) for name, r in results.items()}
            grpc_ratio = results["Envoy gRPC"].rps / base
            rest_ratio = results["Envoy REST"].rps / base
            added_grpc = p50["Envoy gRPC"] - p50["Envoy gRPC, no authz/rl"]
            added_rest = p50["Envoy REST"] - p50["Envoy REST, no authz/rl"]
            print(
                f"concurrency {conc}: gRPC via Envoy / direct {grpc_ratio:.2f}x"
                f" (target >= {TARGETS['grpc']}x), REST via Envoy / direct {rest_ratio:.2f}x"
                f" (target >= {TARGETS['rest']}x)"
            )
            print(
                f"  authz + rate limit add at p50: gRPC {added_grpc:+.2f} ms, REST"
                f" {added_rest:+.2f} ms (target <= {TARGETS['added_p50_ms']} ms); Envoy with"
                f" them adds {p50['Envoy gRPC'] - p50['direct gRPC']:+.2f} ms over direct gRPC"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()

    from service_kit.auth import Principal
    from service_kit.internal_token import Signer, load_private_key

    from gateway.authz import keys

    tmp = Path(tempfile.mkdtemp(prefix="neural-bench-gateway-"))
    private, public = keys.generate(tmp / "keys")
    limits = tmp / "limits.yaml"
    limits.write_text(yaml.safe_dump(LIMITS))
    ports = {name: free_port() for name in ("compiler", "authz", "ratelimit")}
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_REDIS_URL": os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/11"),
        "NEURAL_LOG_LEVEL": "WARNING",
        "NEURAL_AUTHZ_PRIVATE_KEY_FILE": str(private),
        "NEURAL_AUTHZ_PUBLIC_KEY_FILE": str(public),
        "NEURAL_RATELIMIT_CONFIG": str(limits),
    }
    env.pop("NEURAL_DATABASE_URL", None)
    for name, port in ports.items():
        env[f"NEURAL_{name.upper()}_PORT"] = str(port)
        env[f"NEURAL_{name.upper()}_METRICS_PORT"] = str(free_port())
    signer = Signer(load_private_key(private), ttl_seconds=TOKEN_SECONDS)
    made = {"service": signer.sign(Principal("bench-service", "user"))}
    created = subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", *CREATE_KEY],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    made["authz"] = created.stdout.split("key:")[1].split()[0]
    procs = []
    pids = {}
    try:
        for name in ports:
            module = f"services.{name}" if name == "compiler" else f"gateway.{name}"
            with open(tmp / f"{name}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", module],
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                pids[name] = procs[-1].pid
        for port in ports.values():
            wait_port(port)
        envoy, envoy_port, envoy_admin = start_envoy(tmp, "envoy", ports, bare=False)
        procs.append(envoy)
        bare, bare_port, _ = start_envoy(tmp, "bare", ports, bare=True)
        procs.append(bare)
        pids |= {"envoy": envoy.pid, "bare envoy": bare.pid}
        ports |= {"envoy": envoy_port, "bare": bare_port}
        asyncio.run(run(args.requests, ports, made, pids))
        print(f"decisions: {decisions(envoy_admin, int(env['NEURAL_RATELIMIT_METRICS_PORT']))}")
        print(f"services' logs: {tmp}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
