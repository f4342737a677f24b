"""The compiler service's overhead over a bare gRPC server, measured in one run.

A bare grpc.aio echo server and the compiler service (`Validate` on a small program, and
`GetModel`, a database read) are called by the same client at concurrency 1 and 64. Prints
requests per second, p50 and p99, and each ratio to the bare server. Both servers run as
their own processes on loopback; the compiler uses SQLite in a temporary folder and Redis at
NEURAL_REDIS_URL, else 127.0.0.1:6379 (db 11). The client calls the compiler as the gateway
would, with an internal token (x-neural-principal) signed by a keypair of this run's own.

    .venv/bin/python bench/grpc_overhead.py [--requests N]
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
from pathlib import Path

import grpc
from ports import free_port, wait_port
from principal import keypair, metadata

ROOT = Path(__file__).resolve().parent.parent
SOURCE = 'network Small {\n  input: (16)\n  layers:\n    Dense(32, "relu")\n    Output(4)\n}\n'


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


async def measure(call, payload, total: int, concurrency: int) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []

    async def worker(n: int) -> None:
        for _ in range(n):
            t = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - t)

    for _ in range(min(50, total)):  # warm up
        await call(payload)
    started = time.perf_counter()
    await asyncio.gather(*(worker(total // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return (
        len(latencies) / wall,
        statistics.median(latencies) * 1e3,
        latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    )


async def run(
    requests: int, echo_port: int, port: int, md: tuple[tuple[str, str], ...], model_id: str
) -> None:
    from neural.v1 import compiler_pb2, compiler_pb2_grpc

    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_ch,
        grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch,
    ):
        echo = echo_ch.unary_unary("/bench.Echo/Echo")
        stub = compiler_pb2_grpc.CompilerServiceStub(ch)
        validate = compiler_pb2.ValidateRequest(source=SOURCE)
        get = compiler_pb2.GetModelRequest(id=model_id)
        cases = {
            "bare echo": (lambda p: echo(p), validate.SerializeToString()),
            "Validate": (lambda p: stub.Validate(p, metadata=md), validate),
            "GetModel": (lambda p: stub.GetModel(p, metadata=md), get),
        }
        print(f"{requests} requests per case, loopback, one client process")
        print(
            f"{'case':10s} {'conc':>4s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}"
            f" {'req/s vs bare':>14s}"
        )
        for conc in (1, 64):
            base = None
            for name, (call, payload) in cases.items():
                rps, p50, p99 = await measure(call, payload, requests, conc)
                base = base or rps
                print(f"{name:10s} {conc:4d} {rps:9.0f} {p50:8.2f} {p99:8.2f} {rps / base:13.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="neural-bench-"))
    port, echo_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_COMPILER_PORT": str(port),
        "NEURAL_COMPILER_METRICS_PORT": str(free_port()),
        "NEURAL_REDIS_URL": os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/11"),
        "NEURAL_LOG_LEVEL": "WARNING",
    }
    env.pop("NEURAL_DATABASE_URL", None)
    private_key, public_key = keypair(tmp / "keys")
    env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] = str(public_key)
    md = metadata(private_key, "bench", "user")
    procs = [
        subprocess.Popen([sys.executable, __file__, "--echo-server", str(echo_port)]),
        subprocess.Popen([sys.executable, "-m", "services.compiler"], env=env, cwd=ROOT),
    ]
    try:
        wait_port(echo_port)
        wait_port(port)
        from neural.v1 import compiler_pb2, compiler_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            model = (
                compiler_pb2_grpc.CompilerServiceStub(ch)
                .Compile(
                    compiler_pb2.CompileRequest(
                        source=SOURCE, backend=compiler_pb2.BACKEND_PYTORCH
                    ),
                    metadata=md,
                )
                .model
            )
        asyncio.run(run(args.requests, echo_port, port, md, model.id))
    finally:
        for p in procs:
            p.terminate()
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
