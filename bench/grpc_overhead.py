"""The service kit's overhead over a bare gRPC server, measured in one run.

A bare grpc.aio echo server, the compiler (`Validate` on a small program; `GetModel`, a keyed
database read) and the tracker (`GetRun`, a keyed read with the run's details; `LogMetrics` of
one point, a write) are called by the same client at concurrency 1 and 64, each case's calls
in rounds taken in turn so that a busy moment of the machine hits every case. Prints requests
per second, p50, p99, the server's and the client's CPU time per request, and each case's
requests per second and p99 as ratios to the bare server's (the issue's targets: >= 0.6x and
<= 2x). Every server runs as its own process on loopback; the services log as by default (a
JSON line per call, into files in a temporary folder), use SQLite in that folder and Redis at
NEURAL_REDIS_URL, else 127.0.0.1:6379 (db 11). The client calls them as the gateway would,
with an internal token (x-neural-principal) signed by a keypair of this run's own.

    .venv/bin/python bench/grpc_overhead.py [--requests N] [--rounds N] [--cases A,B]
        [--concurrency 1,64] [--log-level INFO]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from ports import free_port, wait_port
from principal import keypair, metadata

ROOT = Path(__file__).resolve().parent.parent
SOURCE = 'network Small {\n  input: (16)\n  layers:\n    Dense(32, "relu")\n    Output(4)\n}\n'
ECHO = "bare echo"
CASES = ("Validate", "GetModel", "GetRun", "LogMetrics")
TARGETS = {"rps": 0.6, "p99": 2.0}  # the issue's: of the bare server's requests/s and p99

Call = Callable[[], Awaitable[object]]


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds
    client_cpu: float = 0.0  # this process's

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall

    def ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if q == 0.5:
            return statistics.median(ordered) * 1e3
        return ordered[max(0, int(len(ordered) * q) - 1)] * 1e3


async def echo_server(port: int) -> None:
    async def echo(request: bytes, context: object) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time so far of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(call: Call, total: int, concurrency: int, result: Result, pid: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await call()
            result.latencies.append(time.perf_counter() - t)

    cpu, client = cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    result.wall += time.perf_counter() - started
    result.cpu += cpu_seconds(pid) - cpu
    result.client_cpu += time.process_time() - client


async def run(
    args: argparse.Namespace,
    ports: dict[str, int],
    pids: dict[str, int],
    md: tuple[tuple[str, str], ...],
    ids: dict[str, str],
) -> None:
    from neural.v1 import compiler_pb2, compiler_pb2_grpc, tracker_pb2, tracker_pb2_grpc

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['echo']}") as echo_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['compiler']}") as compiler_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{ports['tracker']}") as tracker_ch,
    ):
        echo = echo_ch.unary_unary("/bench.Echo/Echo")
        compiler = compiler_pb2_grpc.CompilerServiceStub(compiler_ch)
        tracker = tracker_pb2_grpc.TrackerServiceStub(tracker_ch)
        validate = compiler_pb2.ValidateRequest(source=SOURCE)
        get_model = compiler_pb2.GetModelRequest(id=ids["model"])
        get_run = tracker_pb2.GetRunRequest(id=ids["run"])
        log = tracker_pb2.LogMetricsRequest(
            run_id=ids["run"], metrics=[tracker_pb2.Metric(key="loss", value=0.5, step=1)]
        )
        raw = validate.SerializeToString()
        calls: dict[str, tuple[Call, str]] = {
            ECHO: (lambda: echo(raw), "echo"),
            "Validate": (lambda: compiler.Validate(validate, metadata=md), "compiler"),
            "GetModel": (lambda: compiler.GetModel(get_model, metadata=md), "compiler"),
            "GetRun": (lambda: tracker.GetRun(get_run, metadata=md), "tracker"),
            "LogMetrics": (lambda: tracker.LogMetrics(log, metadata=md), "tracker"),
        }
        cases = {name: calls[name] for name in (ECHO, *args.cases)}
        per_round = args.requests // args.rounds
        print(
            f"{args.requests} requests per case and concurrency in {args.rounds} rounds, loopback,"
            f" one client process, {os.cpu_count()} CPUs shared by the client and the servers"
        )
        print(
            f"{'case':10s} {'conc':>4s} {'req/s':>7s} {'p50 ms':>7s} {'p99 ms':>7s}"
            f" {'CPU ms/req: server':>18s} {'client':>6s} {'req/s vs bare':>13s}"
            f" {'p99 vs bare':>11s}"
        )
        verdicts = []
        for conc in args.concurrency:
            results = {name: Result() for name in cases}
            for call, _ in cases.values():  # warm up: connections open, caches filled
                for _ in range(50):
                    await call()
            for _ in range(args.rounds):
                for name, (call, server) in cases.items():
                    await measure(call, per_round, conc, results[name], pids[server])
            base = results[ECHO]
            for name, r in results.items():
                rps, p99 = r.rps / base.rps, r.ms(0.99) / base.ms(0.99)
                print(
                    f"{name:10s} {conc:4d} {r.rps:7.0f} {r.ms(0.5):7.2f} {r.ms(0.99):7.2f}"
                    f" {r.cpu * 1e3 / len(r.latencies):18.3f}"
                    f" {r.client_cpu * 1e3 / len(r.latencies):6.3f} {rps:12.2f}x {p99:10.2f}x"
                )
                if name != ECHO:
                    met = rps >= TARGETS["rps"] and p99 <= TARGETS["p99"]
                    verdicts.append(
                        f"{name}@{conc} {rps:.2f}x/{p99:.2f}x {'met' if met else 'MISSED'}"
                    )
        print(
            f"targets (req/s >= {TARGETS['rps']}x, p99 <= {TARGETS['p99']}x the bare server's): "
            + ", ".join(verdicts)
        )


def prepare(ports: dict[str, int], md: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """A compiled model, and a run with a few params, tags and metrics: what the cases read."""
    from neural.v1 import compiler_pb2, compiler_pb2_grpc, tracker_pb2, tracker_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{ports['compiler']}") as ch:
        compiler = compiler_pb2_grpc.CompilerServiceStub(ch)
        model = compiler.Compile(
            compiler_pb2.CompileRequest(source=SOURCE, backend=compiler_pb2.BACKEND_PYTORCH),
            metadata=md,
        ).model
    with grpc.insecure_channel(f"127.0.0.1:{ports['tracker']}") as ch:
        tracker = tracker_pb2_grpc.TrackerServiceStub(ch)
        experiment = tracker.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="bench")),
            metadata=md,
        )
        run = tracker.CreateRun(
            tracker_pb2.CreateRunRequest(
                experiment_id=experiment.id,
                run=tracker_pb2.Run(name="bench", tags={"team": "bench", "kind": "overhead"}),
            ),
            metadata=md,
        )
        tracker.LogParams(
            tracker_pb2.LogParamsRequest(run_id=run.id, params={"lr": "0.01", "epochs": "10"}),
            metadata=md,
        )
        tracker.LogMetrics(
            tracker_pb2.LogMetricsRequest(
                run_id=run.id,
                metrics=[tracker_pb2.Metric(key=k, value=0.5, step=1) for k in ("loss", "acc")],
            ),
            metadata=md,
        )
    return {"model": model.id, "run": run.id}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--cases",
        type=lambda s: [c for c in s.split(",") if c],
        default=list(CASES),
        help=f"a comma-separated subset of {','.join(CASES)}",
    )
    ap.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 64])
    ap.add_argument(
        "--log-level",
        default="INFO",
        help="the services' NEURAL_LOG_LEVEL (INFO, the default's, logs every call)",
    )
    ap.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return 0
    unknown = set(args.cases) - set(CASES)
    if unknown:
        ap.error(f"unknown cases {sorted(unknown)}: choose from {', '.join(CASES)}")
    tmp = Path(tempfile.mkdtemp(prefix="neural-bench-"))
    ports = {name: free_port() for name in ("echo", "compiler", "tracker")}
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_REDIS_URL": os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/11"),
        "NEURAL_LOG_LEVEL": args.log_level,
        # one server process: its CPU time is read from /proc/<pid>
        "NEURAL_TRACKER_PROCESSES": "1",
    }
    env.pop("NEURAL_DATABASE_URL", None)
    private_key, public_key = keypair(tmp / "keys")
    env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] = str(public_key)
    md = metadata(private_key, "bench", "user")
    procs = {
        "echo": subprocess.Popen([sys.executable, __file__, "--echo-server", str(ports["echo"])])
    }
    try:
        for name in ("compiler", "tracker"):
            own = {
                f"NEURAL_{name.upper()}_PORT": str(ports[name]),
                f"NEURAL_{name.upper()}_METRICS_PORT": str(free_port()),
                "NEURAL_DATA_DIR": str(tmp / name),  # a database each, as in production
            }
            with open(tmp / f"{name}.log", "ab") as log:  # a line per call at INFO
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"services.{name}"],
                    env={**env, **own},
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for port in ports.values():
            wait_port(port)
        ids = prepare(ports, md)
        asyncio.run(run(args, ports, {n: p.pid for n, p in procs.items()}, md, ids))
        print(f"services' logs: {tmp}")
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
