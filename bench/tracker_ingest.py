"""Tracker ingest and read-back, against a raw asyncpg insert of the same rows, in one run.

For SQLite and PostgreSQL: metric points per second through `LogMetrics` (batches of 1000)
and through `StreamMetrics`, single-point `LogMetrics` calls per second (through a blocking
stub, as a training loop and MLflow's client call, and through grpc.aio) beside the same
server's health check (the floor of any call on this machine), the time of one
10,000-point `GetMetricHistory` page (median of 5, as Metric messages and as columns), the
time to read back a 100,000-point history; and, on PostgreSQL, a raw asyncpg `executemany`
of the same rows into the same table (the ratio is the service's overhead). With `mlflow`
installed in .venv-bench (`make bench-deps`), the same workload against a local MLflow
tracking server (SQLite backend) is printed as a ratio.

Logging from a training loop (bench/logging_loop.py, the same code on both sides): the
points per second a loop reaches with the client's `Run.log_metric` (neural_client: a
buffer, sent over StreamMetrics by a background thread) and with MLflow's
`mlflow.log_metric(..., synchronous=False)` against that MLflow server, counted to the end
of the loop and to the end of the flush that stores the last point (every point is read back
on both sides), and how much longer each makes a loop that logs its loss every step of a tiny
MLP, in wall-clock time (the server shares this machine's cores) and in the training
process's CPU time. The client calls the tracker as the gateway would, with an internal
token (x-neural-principal) signed by a keypair of this run's own; Redis is NEURAL_REDIS_URL,
else 127.0.0.1:6379 db 12.

    .venv/bin/python bench/tracker_ingest.py [--points N] [--million]
    .venv/bin/python bench/tracker_ingest.py --scale   # bench/tracker_scale.py: at scale
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
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import mlflow_server
from ports import free_port, wait_port
from principal import keypair, metadata

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
READS = 5  # history reads per view; the median is printed

# Runs in .venv-bench against a local MLflow tracking server: the same workload.
MLFLOW_CLIENT = r"""
import json, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
uri, points, history = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = MlflowClient(uri)
exp = c.create_experiment(f"bench-{time.time()}")
run = c.create_run(exp).info.run_id
now = int(time.time() * 1000)
t0 = time.perf_counter()
for s in range(0, points, 1000):
    c.log_batch(run, metrics=[Metric("loss", 1.0 / (i + 1), now, i) for i in range(s, s + 1000)])
batch = points / (time.perf_counter() - t0)
run2 = c.create_run(exp).info.run_id
singles = 300
t0 = time.perf_counter()
for i in range(singles):
    c.log_metric(run2, "acc", 0.5, step=i)
single = singles / (time.perf_counter() - t0)
run3 = c.create_run(exp).info.run_id
for s in range(0, history, 1000):
    c.log_batch(run3, metrics=[Metric("h", 0.1, now, i) for i in range(s, s + 1000)])
t0 = time.perf_counter()
got = len(c.get_metric_history(run3, "h"))
hist = time.perf_counter() - t0
print(json.dumps({"batch": batch, "single": single, "history_s": hist, "history_points": got}))
"""

# Runs in .venv-bench: MLflow's asynchronous logging, in the loop our client runs (the
# training-loop pairs are fewer and shorter than ours: MLflow's calls take about a millisecond).
MLFLOW_ASYNC = r"""
import functools, json, sys, time
sys.path.insert(0, sys.argv[3])
import mlflow
from logging_loop import TinyMLP, overhead, throughput
uri, points, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
mlflow.set_tracking_uri(uri)
mlflow.set_experiment(f"async-{time.time()}")
with mlflow.start_run() as run:
    log = functools.partial(mlflow.log_metric, synchronous=False)
    out = throughput(log, mlflow.flush_async_logging, points)
    if repeats:
        out |= overhead(log, mlflow.flush_async_logging, TinyMLP(), 1000, repeats)
got = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"))
assert got == points, (got, points)
print(json.dumps(out))
"""
# Out of the box MLflow sends one request per asynchronous call; with this setting its
# logging thread gathers what was logged for a second into one request, which makes it the
# stronger baseline: the ratios are against it.
MLFLOW_BUFFERING = {"MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS": "1"}


async def workload(
    port: int, md: tuple[tuple[str, str], ...], points: int, scale: bool
) -> dict[str, float]:
    from neural.v1 import tracker_pb2, tracker_pb2_grpc

    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as ch:
        t = tracker_pb2_grpc.TrackerServiceStub(ch)
        exp = await t.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name=f"bench-{uuid.uuid4().hex[:6]}")
            ),
            metadata=md,
        )

        async def new_run() -> str:
            return (
                await t.CreateRun(
                    tracker_pb2.CreateRunRequest(
                        experiment_id=exp.id, run=tracker_pb2.Run(name="bench")
                    ),
                    metadata=md,
                )
            ).id

        def batch(run_id: str, start: int) -> tracker_pb2.LogMetricsRequest:
            return tracker_pb2.LogMetricsRequest(
                run_id=run_id,
                metrics=[
                    tracker_pb2.Metric(key="loss", value=1.0 / (i + 1), step=i)
                    for i in range(start, start + 1000)
                ],
            )

        run = await new_run()
        batches = [batch(run, s) for s in range(0, points, 1000)]
        t0 = time.perf_counter()
        for b in batches:
            await t.LogMetrics(b, metadata=md)
        out["batch_points_per_s"] = points / (time.perf_counter() - t0)

        run2 = await new_run()
        batches2 = [batch(run2, s) for s in range(0, points, 1000)]
        t0 = time.perf_counter()
        await t.StreamMetrics(iter(batches2), metadata=md)
        out["stream_points_per_s"] = points / (time.perf_counter() - t0)

        run3 = await new_run()
        singles = 500
        t0 = time.perf_counter()
        for i in range(singles):
            await t.LogMetrics(
                tracker_pb2.LogMetricsRequest(
                    run_id=run3, metrics=[tracker_pb2.Metric(key="acc", value=0.5, step=i)]
                ),
                metadata=md,
            )
        out["single_calls_per_s"] = singles / (time.perf_counter() - t0)

        run4 = await new_run()
        for s in range(0, 10_000, 1000):
            await t.LogMetrics(batch(run4, s), metadata=md)
        # The median of a few reads: one read is at the mercy of a garbage collection.
        for view, label in (
            (tracker_pb2.METRIC_HISTORY_VIEW_METRICS, "history_10k_s"),
            (tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS, "history_10k_columns_s"),
        ):
            times = []
            for _ in range(READS):
                t0 = time.perf_counter()
                r = await t.GetMetricHistory(
                    tracker_pb2.GetMetricHistoryRequest(
                        run_id=run4, key="loss", page_size=10_000, view=view
                    ),
                    metadata=md,
                )
                times.append(time.perf_counter() - t0)
                assert len(r.metrics) + len(r.values) == 10_000
            out[label] = statistics.median(times)

        t0 = time.perf_counter()
        got, token = 0, ""
        while True:
            r = await t.GetMetricHistory(
                tracker_pb2.GetMetricHistoryRequest(
                    run_id=run, key="loss", page_size=10_000, page_token=token
                ),
                metadata=md,
            )
            got += len(r.metrics)
            token = r.next_page_token
            if not token:
                break
        out["history_read_s"] = time.perf_counter() - t0
        out["history_points"] = got

        if scale:
            # A million points over 100 runs, then the two queries that must stay fast.
            runs_ = [await new_run() for _ in range(100)]
            for i, rid in enumerate(runs_):
                reqs = [
                    tracker_pb2.LogMetricsRequest(
                        run_id=rid,
                        metrics=[
                            tracker_pb2.Metric(key="loss", value=(i + 1) / (j + 1), step=j)
                            for j in range(s, s + 1000)
                        ],
                    )
                    for s in range(0, 10_000, 1000)
                ]
                await t.StreamMetrics(iter(reqs), metadata=md)
            t0 = time.perf_counter()
            r = await t.GetMetricHistory(
                tracker_pb2.GetMetricHistoryRequest(run_id=runs_[50], key="loss", page_size=10_000),
                metadata=md,
            )
            out["million_history_10k_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            found = await t.SearchRuns(
                tracker_pb2.SearchRunsRequest(
                    experiment_ids=[exp.id],
                    filter="metrics.loss < 0.005",
                    order_by=["metrics.loss"],
                    page_size=100,
                ),
                metadata=md,
            )
            out["million_search_s"] = time.perf_counter() - t0
            out["million_search_hits"] = len(found.runs)
    return out


async def raw_asyncpg(dsn: str, points: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        run_id = await conn.fetchval("SELECT id FROM tracker_runs LIMIT 1")
        rows = [(run_id, "raw", i, 1.0 / (i + 1), 0) for i in range(points)]
        t0 = time.perf_counter()
        for s in range(0, points, 1000):
            await conn.executemany(
                "INSERT INTO tracker_metrics (run_id, key, step, value, timestamp) "
                "VALUES ($1, $2, $3, $4, $5)",
                rows[s : s + 1000],
            )
        return points / (time.perf_counter() - t0)
    finally:
        await conn.close()


def sync_singles(port: int, md: tuple[tuple[str, str], ...], calls: int = 1000) -> dict[str, float]:
    """Single-point LogMetrics through a blocking stub, and the health check of the same
    server: the cheapest call there is, so the floor under any RPC's rate here."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from neural.v1 import tracker_pb2, tracker_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        t = tracker_pb2_grpc.TrackerServiceStub(ch)
        exp = t.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name=f"sync-{uuid.uuid4().hex[:6]}")
            ),
            metadata=md,
        )
        run = t.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name="s")),
            metadata=md,
        ).id
        t0 = time.perf_counter()
        for i in range(calls):
            t.LogMetrics(
                tracker_pb2.LogMetricsRequest(
                    run_id=run, metrics=[tracker_pb2.Metric(key="acc", value=0.5, step=i)]
                ),
                metadata=md,
            )
        single = calls / (time.perf_counter() - t0)
        check = health_pb2_grpc.HealthStub(ch).Check
        t0 = time.perf_counter()
        for _ in range(calls):
            check(health_pb2.HealthCheckRequest())
        floor = calls / (time.perf_counter() - t0)
    return {"single_sync_calls_per_s": single, "health_calls_per_s": floor}


def client_logging(port: int, md: tuple[tuple[str, str], ...], points: int) -> dict[str, float]:
    """bench/logging_loop.py through the client's `Run` on this tracker, with the numpy step
    and (torch_*) the PyTorch one; every point read back."""
    from logging_loop import TinyMLP, TorchMLP, overhead, throughput
    from neural.v1 import tracker_pb2, tracker_pb2_grpc
    from neural_client import Run

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        t = tracker_pb2_grpc.TrackerServiceStub(ch)
        exp = t.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name=f"loop-{uuid.uuid4().hex[:6]}")
            ),
            metadata=md,
        )
        created = t.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name="loop")),
            metadata=md,
        )
        with Run(t, md, created, owned=True) as run:
            out = throughput(run.log_metric, run.flush, points)
            out |= overhead(run.log_metric, run.flush, TinyMLP(), 20_000)
            torch_step = overhead(run.log_metric, run.flush, TorchMLP(), 1000)
            out |= {f"torch_{k}": v for k, v in torch_step.items()}
        got, token = 0, ""
        while True:
            page = t.GetMetricHistory(
                tracker_pb2.GetMetricHistoryRequest(
                    run_id=run.id,
                    key="loss",
                    page_size=10_000,
                    page_token=token,
                    view=tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS,
                ),
                metadata=md,
            )
            got += len(page.steps)
            token = page.next_page_token
            if not token:
                break
        assert got == points, (got, points)
    return {f"client_{k}": v for k, v in out.items()}


def run_backend(name: str, database_url: str, points: int, scale: bool) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="neural-tracker-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_DATABASE_URL": database_url,
        "NEURAL_TRACKER_PORT": str(port),
        "NEURAL_TRACKER_METRICS_PORT": str(free_port()),
        "NEURAL_LOG_LEVEL": "WARNING",
        "NEURAL_REDIS_URL": os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/12"),
        "NEURAL_MAX_MESSAGE_BYTES": str(64 << 20),
    }
    private_key, public_key = keypair(tmp / "keys")
    env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] = str(public_key)
    md = metadata(private_key, "bench", "user")
    server = subprocess.Popen([sys.executable, "-m", "services.tracker"], env=env, cwd=ROOT)
    try:
        wait_port(port)
        out = asyncio.run(workload(port, md, points, scale))
        return out | sync_singles(port, md) | client_logging(port, md, points)
    finally:
        server.terminate()
        server.wait(30)


async def pg_database() -> tuple[str, str]:
    name = f"neural_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name, f"postgresql://postgres@127.0.0.1:5432/{name}"


async def drop(name: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def show(label: str, r: dict[str, float]) -> None:
    if "million_search_s" in r:
        print(
            f"{label:10s} at 1M+ points: history 10k {r['million_history_10k_s'] * 1e3:.0f} ms, "
            f"SearchRuns {r['million_search_s'] * 1e3:.0f} ms "
            f"({r['million_search_hits']:.0f} runs)"
        )
    print(
        f"{label:10s} LogMetrics(1000) {r['batch_points_per_s']:9,.0f} pts/s   "
        f"stream {r['stream_points_per_s']:9,.0f} pts/s   "
        f"single {r['single_sync_calls_per_s']:6,.0f} calls/s (aio "
        f"{r['single_calls_per_s']:,.0f}; health check {r['health_calls_per_s']:,.0f})   "
        f"history 10k {r['history_10k_s'] * 1e3:5.1f} ms "
        f"(columns {r['history_10k_columns_s'] * 1e3:4.1f} ms), "
        f"{r['history_points']:,.0f} pts in {r['history_read_s']:.2f} s"
    )
    print(
        f"{label:10s} Run.log_metric: loop {r['client_loop_per_s']:9,.0f} calls/s, delivered "
        f"{r['client_delivered_per_s']:9,.0f} pts/s, {r['client_cpu_us_per_point']:.1f} us "
        f"of CPU a point; logging every step of a "
        f"{r['client_step_us']:.0f} us numpy step costs it {r['client_overhead']:+.1%} "
        f"(CPU {r['client_cpu_overhead']:+.1%}), of a {r['client_torch_step_us']:.0f} us "
        f"PyTorch step {r['client_torch_overhead']:+.1%} "
        f"(CPU {r['client_torch_cpu_overhead']:+.1%})"
    )


def mlflow_baseline(points: int, async_points: int) -> dict[str, Any] | None:
    """The same workload against `mlflow server` with a SQLite backend, and the logging loop
    with MLflow's asynchronous logging (under "async"); None without MLflow."""
    if not mlflow_server.installed():
        return None
    import json

    with mlflow_server.mlflow_server() as uri:
        time.sleep(2)
        proc = subprocess.run(
            [str(BENCH_PY), "-c", MLFLOW_CLIENT, uri, str(points), "10000"],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        for label, count, repeats, settings in (
            ("async", async_points, 5, MLFLOW_BUFFERING),
            ("async_default", 200, 0, {}),
        ):
            proc = subprocess.run(
                [
                    str(BENCH_PY),
                    "-c",
                    MLFLOW_ASYNC,
                    uri,
                    str(count),
                    str(Path(__file__).resolve().parent),
                    str(repeats),
                ],
                env={**os.environ, **settings},
                capture_output=True,
                text=True,
                timeout=1800,
                check=True,
            )
            out[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument(
        "--million",
        action="store_true",
        help="also load 1,000,000 points and time history and search on them",
    )
    ap.add_argument(
        "--scale",
        action="store_true",
        help="only the scale run (bench/tracker_scale.py): downsampled history on series of "
        "10k to 10M points, and reads with 1, 2 and 4 tracker processes, on PostgreSQL",
    )
    args = ap.parse_args()
    if args.scale:
        import tracker_scale

        name, dsn = asyncio.run(pg_database())
        try:
            tracker_scale.run(dsn.replace("postgresql://", "postgresql+asyncpg://"))
        finally:
            asyncio.run(drop(name))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="neural-tracker-sqlite-"))
    sqlite = run_backend(
        "sqlite", f"sqlite+aiosqlite:///{tmp / 'bench.db'}", args.points, args.million
    )
    show("sqlite", sqlite)
    name, dsn = asyncio.run(pg_database())
    try:
        pg = run_backend(
            "postgres",
            dsn.replace("postgresql://", "postgresql+asyncpg://"),
            args.points,
            args.million,
        )
        show("postgres", pg)
        raw = asyncio.run(raw_asyncpg(dsn, args.points))
        print(
            f"raw asyncpg executemany into the same table: {raw:,.0f} pts/s; service "
            f"LogMetrics / raw = {pg['batch_points_per_s'] / raw:.2f}x"
        )
    finally:
        asyncio.run(drop(name))
    ml = mlflow_baseline(min(args.points, 20_000), min(args.points, 20_000))
    if ml is None:
        print("mlflow not installed in .venv-bench (make bench-deps): no MLflow ratio")
        return 0
    print(
        f"mlflow     log_batch(1000) {ml['batch']:9,.0f} pts/s   single {ml['single']:6,.1f} "
        f"calls/s   history 10k {ml['history_s'] * 1e3:5.0f} ms"
    )
    for label, r in (("sqlite", sqlite), ("postgres", pg)):
        print(
            f"ours/mlflow on {label:8s}: ingest {r['batch_points_per_s'] / ml['batch']:6.1f}x "
            f"(stream {r['stream_points_per_s'] / ml['batch']:6.1f}x), single calls "
            f"{r['single_sync_calls_per_s'] / ml['single']:6.1f}x, history 10k "
            f"{ml['history_s'] / r['history_10k_s']:6.1f}x faster "
            f"(columns {ml['history_s'] / r['history_10k_columns_s']:6.1f}x)"
        )
    a, d = ml["async"], ml["async_default"]
    print(
        f"mlflow     log_metric(synchronous=False), buffering 1 s: loop {a['loop_per_s']:7,.0f} "
        f"calls/s, delivered {a['delivered_per_s']:7,.0f} pts/s, "
        f"{a['cpu_us_per_point']:.0f} us of CPU a point; logging every step of a "
        f"{a['step_us']:.0f} us numpy step costs it {a['overhead']:+.0%} "
        f"(CPU {a['cpu_overhead']:+.0%}); unbuffered (the default): loop "
        f"{d['loop_per_s']:,.0f} calls/s, delivered {d['delivered_per_s']:,.0f} pts/s"
    )
    for label, r in (("sqlite", sqlite), ("postgres", pg)):
        print(
            f"Run.log_metric / mlflow async on {label:8s}: loop "
            f"{r['client_loop_per_s'] / a['loop_per_s']:6.1f}x, delivered "
            f"{r['client_delivered_per_s'] / a['delivered_per_s']:6.1f}x points/s, CPU a point "
            f"{a['cpu_us_per_point'] / r['client_cpu_us_per_point']:5.0f}x less; overhead on "
            f"the numpy step {r['client_overhead']:+.1%} vs {a['overhead']:+.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
