"""Submit-to-started latency of training jobs, against a bare Dramatiq round trip, in one run.

Starts a private stack (Redis on a free port, SQLite, the authz service, the tracker, the
trainer and one training worker, which asks authz for its tokens to act for a job's owner
with a key of its own, as under `make run`), then N times: SubmitTraining of a trivial job,
WatchTrainingJob until its `started` event, cancel it, wait until the worker is free. The
baseline is the floor under that: a no-op Dramatiq actor on the same Redis, time from `send`
to the actor running, with an in-process worker. Prints p50/p99 of both and the ratio. The
client calls the trainer as the gateway would, with an internal token (x-neural-principal)
signed by a keypair of this run's own.

Before those, the first epoch: a digits job (the demo's network) submitted as the worker
process starts, timed from its `started` event to its first epoch's `progress` event, then a
second one on the now warm worker. A worker warms the training path before it takes a job
(services/trainer/warmup.py), so the two should be close.

    .venv/bin/python bench/job_latency.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ports import free_port, wait_port  # noqa: E402
from bench.principal import keypair, metadata  # noqa: E402

TRIVIAL = """
network Trivial {
  input: (4,)
  layers:
    Dense(4, "relu")
    Output(2, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam()
}
"""


DIGITS = """
network DigitsDemo {
  input: (64,)
  layers:
    Dense(64, "relu")
    Dropout(0.1)
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
  train { epochs: 2 batch_size: 32 validation_split: 0.2 }
}
"""


def percentiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[98]


def baseline(redis_url: str, n: int) -> list[float]:
    """send -> actor start, milliseconds, with a worker that is already warm."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, namespace="bench")
    started: dict[int, float] = {}
    ready = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="bench", max_retries=0)
    def noop(i: int) -> None:
        started[i] = time.perf_counter()
        ready.set()

    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    out = []
    try:
        for i in range(n):
            ready.clear()
            t0 = time.perf_counter()
            noop.send(i)
            ready.wait(30)
            out.append((started[i] - t0) * 1000)
    finally:
        worker.stop()
    return out


def ours(
    address: str, meta: tuple[tuple[str, str], ...], n: int, rpc: list[float] | None = None
) -> list[float]:
    from neural.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

    stub = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(address))
    request = trainer_pb2.SubmitTrainingRequest(
        source=TRIVIAL,
        dataset=trainer_pb2.DatasetSpec(
            synthetic=trainer_pb2.SyntheticDataset(num_samples=64, num_classes=2, seed=0)
        ),
        epochs=10_000,
    )
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        job = stub.SubmitTraining(request, metadata=meta)
        if rpc is not None:
            rpc.append((time.perf_counter() - t0) * 1000)
        for event in stub.WatchTrainingJob(common_pb2.WatchJobRequest(id=job.id), metadata=meta):
            if event.type == "started":
                out.append((time.perf_counter() - t0) * 1000)
                break
        stub.CancelTrainingJob(common_pb2.CancelJobRequest(id=job.id), metadata=meta)
        while True:  # the worker is free again before the next submit
            state = stub.GetTrainingJob(common_pb2.GetJobRequest(id=job.id), metadata=meta).state
            if state == common_pb2.JOB_STATE_CANCELLED:
                break
            time.sleep(0.02)
    return out


def first_epoch(address: str, meta: tuple[tuple[str, str], ...]) -> float:
    """Seconds from a digits job's `started` event to its first epoch's; waits for its end."""
    from neural.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

    stub = trainer_pb2_grpc.TrainerServiceStub(grpc.insecure_channel(address))
    digits = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    job = stub.SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(source=DIGITS, dataset=digits), metadata=meta
    )
    started = epoch = None
    watch = common_pb2.WatchJobRequest(id=job.id)
    for event in stub.WatchTrainingJob(watch, metadata=meta, timeout=600):
        if event.type == "started" and started is None:
            started = time.perf_counter()
        elif event.type == "progress" and started is not None and epoch is None:
            epoch = time.perf_counter()
        elif event.type in ("completed", "failed", "cancelled"):
            if event.type != "completed" or started is None or epoch is None:
                raise RuntimeError(f"the digits job ended {event.type}: {event.message}")
            break
    assert started is not None and epoch is not None
    return epoch - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    run(ap.parse_args().jobs)
    return 0


def run(jobs: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="neural-latency-"))
    redis_port, tracker_port, trainer_port = free_port(), free_port(), free_port()
    authz_port = free_port()
    private_key, public_key = keypair(tmp / "keys")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "NEURAL_TRACKER_PORT": str(tracker_port),
        "NEURAL_TRACKER_METRICS_PORT": str(free_port()),
        "NEURAL_TRACKER_ADDRESS": f"127.0.0.1:{tracker_port}",
        "NEURAL_TRAINER_PORT": str(trainer_port),
        "NEURAL_TRAINER_METRICS_PORT": str(free_port()),
        "NEURAL_AUTHZ_PORT": str(authz_port),
        "NEURAL_AUTHZ_METRICS_PORT": str(free_port()),
        "NEURAL_AUTHZ_ADDRESS": f"127.0.0.1:{authz_port}",
        "NEURAL_AUTHZ_PRIVATE_KEY_FILE": str(private_key),
        "NEURAL_AUTHZ_PUBLIC_KEY_FILE": str(public_key),
        # the worker's own key: an admin key scoped to asking authz for owners' tokens
        "NEURAL_SERVICE_KEY_FILE": str(tmp / "keys" / "worker.key"),
        "NEURAL_LOG_LEVEL": "WARNING",
        "dramatiq_prom_port": str(free_port()),
        "dramatiq_worker_timeout": "100",  # as make run starts workers
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> subprocess.Popen:
        log = open(tmp / f"{len(procs)}.log", "wb")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    bin_dir = Path(sys.executable).parent
    try:
        server = shutil.which("redis-server") or "redis-server"
        start([server, "--port", str(redis_port), "--save", "", "--appendonly", "no"])
        wait_port(redis_port)
        subprocess.run(
            [
                *(sys.executable, "-m", "gateway.authz.keys", "create", "--name", "workers"),
                *("--role", "admin", "--scope", "/neural.v1.AuthService/IssueDelegatedToken"),
                *("--key-file", env["NEURAL_SERVICE_KEY_FILE"]),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        start([sys.executable, "-m", "gateway.authz"])
        start([sys.executable, "-m", "services.tracker"])
        start([sys.executable, "-m", "services.trainer"])
        wait_port(authz_port, 90)
        wait_port(tracker_port, 90)
        wait_port(trainer_port, 90)
        start([str(bin_dir / "dramatiq"), "services.trainer.worker", "--processes", "1"])
        meta = metadata(private_key, "bench", "user")
        address = f"127.0.0.1:{trainer_port}"
        # queued while the worker process starts: its first job
        fresh, warm = first_epoch(address, meta), first_epoch(address, meta)
        ours(address, meta, 3)  # warm up the submit path
        base = baseline(env["NEURAL_REDIS_URL"], jobs)
        rpc: list[float] = []
        mine = ours(address, meta, jobs, rpc)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    b50, b99 = percentiles(base)
    o50, o99 = percentiles(mine)
    print(f"submit -> started over {jobs} jobs (one worker, loopback, SQLite)")
    print(f"  bare Dramatiq send -> actor   p50 {b50:7.1f} ms   p99 {b99:7.1f} ms")
    print(f"  SubmitTraining -> started     p50 {o50:7.1f} ms   p99 {o99:7.1f} ms")
    r50, r99 = percentiles(rpc)
    print(f"    of which the RPC itself     p50 {r50:7.1f} ms   p99 {r99:7.1f} ms")
    print(f"  ratio ours / bare             p50 {o50 / b50:7.1f}x   p99 {o99 / b99:7.1f}x")
    print("  target: ours p50 <= 20 ms, p99 <= 40 ms")
    print("first epoch of a digits job, after its started event (target <= 2 s)")
    print(f"  a fresh worker's first job    {fresh:7.2f} s")
    print(f"  the next job                  {warm:7.2f} s")


if __name__ == "__main__":
    sys.exit(main())
