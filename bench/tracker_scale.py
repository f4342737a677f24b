"""The tracker at scale (`bench/tracker_ingest.py --scale`): what a chart's read costs as a
series grows, and what more tracker processes buy, on PostgreSQL, in one run.

1. Downsampled history: series of 10k, 100k, 1M and 10M points (loaded through StreamMetrics,
   a thousand points a message), each read with `max_points=500` (median of 5 reads), the
   10M/10k ratio printed against the target (flat within 2x); beside it the full history of
   the same series through MLflow's REST client (`get_metric_history`, no downsampling: all
   it offers) where a local MLflow server can hold the series in the time given.
2. Processes: the tracker started with NEURAL_TRACKER_PROCESSES=1, 2 and 4 behind one port;
   for a fixed time, a writer streams batches into one run while two client processes keep
   READERS reads in flight each, each read loop on a connection of its own (the kernel hands
   connections, not calls, to the processes: one channel would reach one process): GetRun,
   SearchRuns and a 1,000-point history page, in turn;
   reads per second and points per second, and the 2/1 read ratio against the target (1.7x on
   two cores), with the CPU the servers and the clients used: clients share the machine's
   cores with the servers, as on a developer's laptop, so the servers can never have both.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import mlflow_server
from ports import free_port, wait_port
from principal import keypair, metadata

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = mlflow_server.BENCH_PY
SIZES = (10_000, 100_000, 1_000_000, 10_000_000)
MAX_POINTS = 500
READS = 7  # timed reads per series (the median is printed), after WARM ones
WARM = 10  # each of the 8 pooled connections prepares its statements on first use
MIXED_S = 10.0  # seconds of mixed load per process count
READERS = 16  # reads in flight per client process
WRITES = 1_000_000  # points the writer may send in the mixed run (prebuilt)
MLFLOW_LIMIT_S = 120  # the time MLflow gets to load and read one series

MLFLOW_HISTORY = r"""
import json, sys, time
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
uri, points = sys.argv[1], int(sys.argv[2])
c = MlflowClient(uri)
run = c.create_run(c.create_experiment(f"scale-{time.time()}")).info.run_id
now = int(time.time() * 1000)
for s in range(0, points, 1000):
    c.log_batch(run, metrics=[Metric("h", 1.0 / (i + 1), now, i) for i in range(s, s + 1000)])
times = []
for _ in range(3):
    t0 = time.perf_counter()
    got = len(c.get_metric_history(run, "h"))
    times.append(time.perf_counter() - t0)
print(json.dumps({"history_s": sorted(times)[1], "points": got}))
"""


class Tracker:
    """A tracker server (with `processes` processes) on a database of its own."""

    def __init__(self, database_url: str, processes: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="neural-tracker-scale-"))
        self.port = free_port()
        private_key, public_key = keypair(self.tmp / "keys")
        self.md = metadata(private_key, "bench", "user")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NEURAL_DATA_DIR": str(self.tmp),
            "NEURAL_DATABASE_URL": database_url,
            "NEURAL_TRACKER_PORT": str(self.port),
            "NEURAL_TRACKER_METRICS_PORT": str(free_port()),
            "NEURAL_TRACKER_PROCESSES": str(processes),
            "NEURAL_LOG_LEVEL": "WARNING",
            "NEURAL_REDIS_URL": os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/12"),
            "NEURAL_AUTHZ_PUBLIC_KEY_FILE": str(public_key),
        }
        self.proc = subprocess.Popen([sys.executable, "-m", "services.tracker"], env=env, cwd=ROOT)
        wait_port(self.port)

    def cpu_s(self) -> float:
        """CPU seconds used so far by the server processes (the group's children, or the
        one server)."""
        pids = [self.proc.pid]
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
        total = 0.0
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def postgres_cpu_s() -> float:
    """CPU seconds of every PostgreSQL process on this machine (the database shares the
    cores too)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError):
            continue
        if head.endswith("(postgres"):
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stub(port: int) -> Any:
    """A channel of its own connection (grpc shares one between channels with equal settings
    unless told not to): SO_REUSEPORT spreads connections over the processes, not calls."""
    from neural.v1 import tracker_pb2_grpc

    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )
    return channel, tracker_pb2_grpc.TrackerServiceStub(channel)


async def new_run(t: Any, md: Any, experiment_id: str) -> str:
    from neural.v1 import tracker_pb2

    run = tracker_pb2.Run(name="scale")
    req = tracker_pb2.CreateRunRequest(experiment_id=experiment_id, run=run)
    return (await t.CreateRun(req, metadata=md)).id


async def new_experiment(t: Any, md: Any) -> str:
    from neural.v1 import tracker_pb2

    exp = tracker_pb2.Experiment(name=f"scale-{uuid.uuid4().hex[:8]}")
    return (
        await t.CreateExperiment(tracker_pb2.CreateExperimentRequest(experiment=exp), metadata=md)
    ).id


def batches(run_id: str, start: int, points: int, key: str = "loss") -> Iterator[Any]:
    """LogMetricsRequests of 1,000 points: a noisy falling curve with a spike every 100k
    steps (downsampling must keep the spikes)."""
    from neural.v1 import tracker_pb2

    for s in range(start, start + points, 1000):
        yield tracker_pb2.LogMetricsRequest(
            run_id=run_id,
            metrics=[
                tracker_pb2.Metric(
                    key=key, step=i, value=(10.0 if i % 100_000 == 99_999 else 1.0 / (1 + i % 977))
                )
                for i in range(s, min(s + 1000, start + points))
            ],
        )


async def downsampled_reads(tracker: Tracker) -> list[dict[str, float]]:
    from neural.v1 import tracker_pb2

    channel, t = stub(tracker.port)
    md = tracker.md
    rows = []
    async with channel:
        exp = await new_experiment(t, md)
        for size in SIZES:
            run = await new_run(t, md, exp)
            t0 = time.perf_counter()
            await t.StreamMetrics(batches(run, 0, size), metadata=md)
            load_s = time.perf_counter() - t0
            times, got = [], 0
            for i in range(WARM + READS):
                t0 = time.perf_counter()
                r = await t.GetMetricHistory(
                    tracker_pb2.GetMetricHistoryRequest(
                        run_id=run,
                        key="loss",
                        max_points=MAX_POINTS,
                        view=tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS,
                    ),
                    metadata=md,
                )
                if i >= WARM:
                    times.append(time.perf_counter() - t0)
                got = len(r.values)
                spikes = sum(1 for v in r.values if v == 10.0)
            rows.append(
                {
                    "points": size,
                    "load_s": load_s,
                    "read_s": statistics.median(times),
                    "returned": got,
                    "spikes": spikes,
                    "spikes_logged": size // 100_000,
                }
            )
            print(
                f"  {size:>10,} points: loaded in {load_s:6.1f} s; max_points={MAX_POINTS} read "
                f"{rows[-1]['read_s'] * 1e3:7.1f} ms ({got} points, {spikes} of "
                f"{size // 100_000} spikes kept)",
                flush=True,
            )
    return rows


def mlflow_history(points: int) -> float | None:
    """MLflow's full history read of the same series (seconds), None when it cannot hold it
    in MLFLOW_LIMIT_S or is not installed."""
    if not mlflow_server.installed():
        return None
    with mlflow_server.mlflow_server() as uri:
        try:
            proc = subprocess.run(
                [str(BENCH_PY), "-c", MLFLOW_HISTORY, uri, str(points)],
                capture_output=True,
                text=True,
                timeout=MLFLOW_LIMIT_S,
            )
        except subprocess.TimeoutExpired:
            return None
    if proc.returncode:
        return None
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["history_s"])


def _reader(
    port: int, md: Any, run_ids: list[str], experiment_id: str, seconds: float, q: Any
) -> None:
    """A client process: READERS reads in flight for `seconds`; puts its count on q."""
    from neural.v1 import tracker_pb2

    async def go() -> int:
        # a connection per reader loop, as many callers (or Envoy's workers) would have
        stubs = [stub(port) for _ in range(READERS)]
        done = 0
        deadline = time.monotonic() + seconds

        async def loop(i: int) -> None:
            nonlocal done
            n = i
            t = stubs[i][1]
            while time.monotonic() < deadline:
                run = run_ids[n % len(run_ids)]
                kind = n % 3
                if kind == 0:
                    await t.GetRun(tracker_pb2.GetRunRequest(id=run), metadata=md)
                elif kind == 1:
                    await t.SearchRuns(
                        tracker_pb2.SearchRunsRequest(experiment_ids=[experiment_id], page_size=20),
                        metadata=md,
                    )
                else:
                    await t.GetMetricHistory(
                        tracker_pb2.GetMetricHistoryRequest(
                            run_id=run,
                            key="loss",
                            page_size=1000,
                            view=tracker_pb2.METRIC_HISTORY_VIEW_COLUMNS,
                        ),
                        metadata=md,
                    )
                done += 1
                n += READERS
            return None

        await asyncio.gather(*(loop(i) for i in range(READERS)))
        for channel, _ in stubs:
            await channel.close()
        return done

    done = asyncio.run(go())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    q.put((done, usage.ru_utime + usage.ru_stime))


async def mixed(tracker: Tracker, seconds: float) -> dict[str, float]:
    """Reads per second from two client processes while a writer streams into one run."""
    channel, t = stub(tracker.port)
    md = tracker.md
    async with channel:
        exp = await new_experiment(t, md)
        run_ids = [await new_run(t, md, exp) for _ in range(20)]
        for run in run_ids:  # something to read: 5,000 points each
            await t.StreamMetrics(batches(run, 0, 5000), metadata=md)
        writer_run = await new_run(t, md, exp)
        # built before the clock starts: building messages would take the servers' CPU
        prebuilt = [
            list(batches(writer_run, s, 10_000, "ingest")) for s in range(0, WRITES, 10_000)
        ]
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        readers = [
            ctx.Process(target=_reader, args=(tracker.port, md, run_ids, exp, seconds, q))
            for _ in range(2)
        ]
        for p in readers:
            p.start()
        written = 0
        t0 = time.perf_counter()
        cpu0, own0, pg0 = tracker.cpu_s(), time.process_time(), postgres_cpu_s()
        for batch in prebuilt:
            if time.perf_counter() - t0 >= seconds:
                break
            await t.StreamMetrics(iter(batch), metadata=md)
            written += 10_000
        write_s = time.perf_counter() - t0
        server_cpu, writer_cpu = tracker.cpu_s() - cpu0, time.process_time() - own0
        pg_cpu = postgres_cpu_s() - pg0
        counts = [q.get(timeout=120) for _ in readers]
        for p in readers:
            p.join(60)
    reads = sum(n for n, _ in counts)
    return {
        "reads_per_s": reads / seconds,
        "points_per_s": written / write_s,
        "server_cores": server_cpu / write_s,
        "reader_cores": sum(c for _, c in counts) / seconds,
        "writer_cores": writer_cpu / write_s,
        "postgres_cores": pg_cpu / write_s,
    }


def run(database_url: str, parts: tuple[str, ...] = ("history", "processes")) -> None:
    if "history" in parts:
        history(database_url)
    if "processes" in parts:
        processes(database_url)


def history(database_url: str) -> None:
    print(f"downsampled history (max_points={MAX_POINTS}) on PostgreSQL:", flush=True)
    tracker = Tracker(database_url, 1)
    try:
        rows = asyncio.run(downsampled_reads(tracker))
    finally:
        tracker.stop()
    flat = rows[-1]["read_s"] / rows[0]["read_s"]
    print(f"  {SIZES[-1]:,} / {SIZES[0]:,} points read time: {flat:.2f}x (target: flat within 2x)")
    for row in rows:
        ml = mlflow_history(row["points"]) if row["points"] <= 100_000 else None
        if ml is None:
            print(f"  mlflow full history of {row['points']:>10,} points: - (not held in time)")
        else:
            print(
                f"  mlflow full history of {row['points']:>10,} points: {ml * 1e3:8.1f} ms; "
                f"ours (downsampled) {ml / row['read_s']:.0f}x faster"
            )


def processes(database_url: str) -> None:
    print(
        f"ingest and mixed reads for {MIXED_S:.0f} s "
        f"(2 client processes, {READERS} reads in flight each):"
    )
    results = {}
    for n in (1, 2, 4):
        tracker = Tracker(database_url, n)
        try:
            results[n] = asyncio.run(mixed(tracker, MIXED_S))
        finally:
            tracker.stop()
        r = results[n]
        print(
            f"  {n} process(es): {r['reads_per_s']:8.1f} reads/s, "
            f"ingest {r['points_per_s']:10,.0f} pts/s; CPU cores used: servers "
            f"{r['server_cores']:.2f}, reader clients {r['reader_cores']:.2f}, "
            f"writer {r['writer_cores']:.2f}, PostgreSQL {r['postgres_cores']:.2f}",
            flush=True,
        )
    print(
        f"  reads 2/1 processes: {results[2]['reads_per_s'] / results[1]['reads_per_s']:.2f}x "
        f"(target >= 1.7x on 2 cores); 4/1: "
        f"{results[4]['reads_per_s'] / results[1]['reads_per_s']:.2f}x"
    )
    per_read = {n: r["server_cores"] / r["reads_per_s"] * 1e3 for n, r in results.items()}
    print(
        "  server CPU per read (the writer's batches included): "
        + ", ".join(f"{n} process(es) {ms:.2f} ms" for n, ms in per_read.items())
    )
