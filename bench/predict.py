"""Model serving: the deployer's replica against in-process onnxruntime and KServe, in one run.

Two models: the corpus's MNIST CNN (tests/dsl/corpus, compiled by `neural_dsl compile --backend
onnx`) and a Dense network trained here on scikit-learn's digits with torch and exported to
ONNX. For each, ModelInfer throughput and p50/p99 latency of 1-row requests (as serving traffic
is) at concurrency 1 and 32, on:
  in-process   onnxruntime `session.run` on the same rows, one thread per concurrent caller
               (no network, no protocol: the limit);
  replica      `python -m services.deployer.replica`, batching off (--max-batch-size 1) and on
               (--max-batch-size 32 --max-batch-delay-us 500);
  KServe       KServe's Python model server (V2 gRPC) with the same onnxruntime model inside a
               `kserve.Model` (bench/kserve_peer.py, run from .venv-bench: `make bench-deps`).
  floor        a bare grpc.aio server answering ModelInfer with a fixed reply (no parsing, no
               model): what any Python gRPC server pays per call on this machine.
Every session runs with one intra-op thread. All servers get the same pre-built requests
(raw_input_contents, as tritonclient sends) from the same grpc.aio client, one channel per 8
concurrent callers, after a warm-up. The servers are all up at once, idle but for the one being
called, and each target's requests go in interleaved rounds (in-process, then each server in
turn), so load from elsewhere on the machine falls on all of them alike. Prints a table per
model (with the server's and the client's CPU time per request: on a machine with few cores the
Python client's share bounds what any server can show), the issue's targets beside the measured
ratios, and the digits model's accuracy on held-out digits from the replica's served
predictions. No KServe rows when .venv-bench lacks kserve.

    .venv/bin/python bench/predict.py [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
from inference import grpc_predict_v2_pb2 as pb
from inference import grpc_predict_v2_pb2_grpc as pb_grpc
from ports import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
CORPUS_MODEL = ROOT / "tests" / "dsl" / "corpus" / "examples" / "examples__mnist.neural"
NAME = "bench"
CONCURRENCY = (1, 32)
PER_CHANNEL = 8  # concurrent callers sharing one HTTP/2 connection
WARMUP = 200
BATCHING = ("--max-batch-size", "32", "--max-batch-delay-us", "500")
IN_PROCESS, FLOOR, OFF, ON, KSERVE = (
    "in-process",
    "bare grpc.aio (floor)",
    "replica, batching off",
    "replica, batching on",
    "KServe",
)


@dataclass
class Result:
    rps: float
    p50: float  # ms
    p99: float  # ms
    server_us: float  # the server's CPU time per request (in-process: the process's)
    client_us: float | None  # the client process's CPU time per request


@dataclass
class Sample:
    """The timed chunks of one target at one concurrency, summed over the rounds."""

    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float | None = None

    def add(self, latencies: list[float], wall: float, cpu: float, client: float | None) -> None:
        self.latencies += latencies
        self.wall += wall
        self.server_cpu += cpu
        if client is not None:
            self.client_cpu = (self.client_cpu or 0.0) + client

    def result(self) -> Result:
        n = len(self.latencies)
        ordered = sorted(self.latencies)
        return Result(
            n / self.wall,
            statistics.median(ordered) * 1e3,
            ordered[max(0, int(n * 0.99) - 1)] * 1e3,
            self.server_cpu / n * 1e6,
            None if self.client_cpu is None else self.client_cpu / n * 1e6,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shares(total: int, workers: int) -> list[int]:
    return [total // workers + (i < total % workers) for i in range(workers)]


def session(path: Path) -> ort.InferenceSession:
    """The replica's session settings (services/deployer/replica/model.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def in_process(
    s: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], total: int, concurrency: int
) -> tuple[list[float], float, float]:
    """`concurrency` threads calling session.run on 1-row inputs, `total` runs in all:
    (latencies, wall seconds, the process's CPU seconds)."""
    latencies: list[float] = []
    start = threading.Barrier(concurrency + 1)

    def worker(n: int, offset: int) -> None:
        mine = []
        start.wait()
        for i in range(n):
            t = time.perf_counter()
            s.run(None, feeds[(offset + i) % len(feeds)])
            mine.append(time.perf_counter() - t)
        latencies.extend(mine)  # list.extend is atomic under the GIL

    threads = [
        threading.Thread(target=worker, args=(n, i * 7))
        for i, n in enumerate(_shares(total, concurrency))
    ]
    for t in threads:
        t.start()
    start.wait()
    cpu, started = time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - started, time.process_time() - cpu


def requests_for(path: Path, rows: np.ndarray) -> list[pb.ModelInferRequest]:
    name = session(path).get_inputs()[0].name
    return [
        pb.ModelInferRequest(
            model_name=NAME,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype="FP32", shape=[1, *rows.shape[1:]]
                )
            ],
            raw_input_contents=[np.ascontiguousarray(rows[i : i + 1]).tobytes()],
        )
        for i in range(len(rows))
    ]


def output(response: pb.ModelInferResponse) -> np.ndarray:
    """The first output as float32 (raw or typed contents: whichever the server answered)."""
    if response.raw_output_contents:
        return np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    return np.asarray(response.outputs[0].contents.fp32_contents, dtype=np.float32)


async def _calls(
    stub_list: list[pb_grpc.GRPCInferenceServiceStub],
    reqs: list[pb.ModelInferRequest],
    total: int,
    concurrency: int,
    seen: Callable[[int, pb.ModelInferResponse], None] | None = None,
) -> tuple[list[float], float]:
    latencies: list[float] = []

    async def worker(w: int, n: int) -> None:
        stub = stub_list[w // PER_CHANNEL]
        for i in range(n):
            k = (w * 7 + i) % len(reqs) if seen is None else w + i * concurrency
            t = time.perf_counter()
            response = await stub.ModelInfer(reqs[k])
            latencies.append(time.perf_counter() - t)
            if seen is not None:
                seen(k, response)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w, n) for w, n in enumerate(_shares(total, concurrency))))
    return latencies, time.perf_counter() - started


async def served(
    stub_list: list[pb_grpc.GRPCInferenceServiceStub],
    pid: int,
    reqs: list[pb.ModelInferRequest],
    total: int,
    conc: int,
) -> tuple[list[float], float, float, float]:
    """(latencies, wall seconds, the server's CPU seconds, the client's CPU seconds)."""
    cpu, client = cpu_seconds(pid), time.process_time()
    latencies, wall = await _calls(stub_list, reqs, total, conc)
    return latencies, wall, cpu_seconds(pid) - cpu, time.process_time() - client


async def measure(
    model: Path,
    rows: np.ndarray,
    total: int,
    rounds: int,
    servers: dict[str, tuple[int, int]],
) -> dict[tuple[str, int], Result]:
    """Every target at each concurrency, `total` requests each, in `rounds` interleaved chunks
    (in-process, then each server, in turn): load from elsewhere on the machine falls on all
    targets alike."""
    s = session(model)
    name = s.get_inputs()[0].name
    feeds = [{name: rows[i : i + 1]} for i in range(len(rows))]
    reqs = requests_for(model, rows)
    for i in range(WARMUP):
        s.run(None, feeds[i % len(feeds)])
    results: dict[tuple[str, int], Result] = {}
    for conc in CONCURRENCY:
        channels = {t: _channels(port, conc) for t, (port, _) in servers.items()}
        stubs = {
            t: [pb_grpc.GRPCInferenceServiceStub(c) for c in chs] for t, chs in channels.items()
        }
        try:
            for stub_list in stubs.values():
                await _calls(stub_list, reqs, WARMUP, conc)
            samples = {t: Sample() for t in (IN_PROCESS, *servers)}
            for n in _shares(total, rounds):
                samples[IN_PROCESS].add(*in_process(s, feeds, n, conc), None)
                for t, (_, pid) in servers.items():
                    samples[t].add(*await served(stubs[t], pid, reqs, n, conc))
        finally:
            for chs in channels.values():
                for ch in chs:
                    await ch.close()
        results.update({(t, conc): sample.result() for t, sample in samples.items()})
    return results


async def predictions(port: int, reqs: list[pb.ModelInferRequest], conc: int = 32) -> np.ndarray:
    """The served outputs' argmax for each request, in order (`conc` callers: worker w sends
    requests w, w + conc, ..., so together they send each once)."""
    got: dict[int, int] = {}
    channels = _channels(port, conc)
    stub_list = [pb_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
    try:
        await _calls(
            stub_list,
            reqs,
            len(reqs),
            conc,
            lambda k, r: got.__setitem__(k, int(output(r).argmax())),
        )
    finally:
        for ch in channels:
            await ch.close()
    return np.array([got[k] for k in range(len(reqs))])


def _channels(port: int, concurrency: int) -> list[grpc.aio.Channel]:
    return [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        for _ in range(-(-concurrency // PER_CHANNEL))
    ]


async def ready(port: int, timeout: float = 120) -> None:
    """Once the server answers ModelReady for NAME (KServe loads before it listens)."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        while True:
            try:
                if (await stub.ModelReady(pb.ModelReadyRequest(name=NAME), timeout=2)).ready:
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)


@contextmanager
def replica(model: Path, log: Path, *args: str) -> Iterator[tuple[int, int]]:
    """(port, pid) of a replica serving `model` with `args`."""
    env = {k: v for k, v in os.environ.items() if k != "NEURAL_AUTHZ_PUBLIC_KEY_FILE"}
    env.update(PYTHONPATH=str(ROOT), NEURAL_LOG_LEVEL="WARNING")
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.deployer.replica",
                "--model",
                str(model),
                "--model-name",
                NAME,
                "--model-version",
                "v1",
                "--port",
                "0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=env,
        )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"replica did not start ({line!r}): see {log}")
        yield int(line.split()[1]), proc.pid
    finally:
        _stop(proc)


@contextmanager
def kserve(model: Path, log: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of KServe's model server serving `model` (bench/kserve_peer.py)."""
    port = free_port()
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                str(BENCH_PY),
                str(ROOT / "bench" / "kserve_peer.py"),
                "--model",
                str(model),
                "--model-name",
                NAME,
                "--grpc-port",
                str(port),
                "--http-port",
                str(free_port()),
            ],
            stdout=err,
            stderr=err,
            cwd=ROOT,
            env={**os.environ, "KSERVE_LOGLEVEL": "WARNING"},
        )
    try:
        asyncio.run(ready(port))
        yield port, proc.pid
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout:
        proc.stdout.close()


async def floor_server(port: int, reply: bytes) -> None:
    """ModelInfer answered with a fixed reply, the request left unparsed and no model run:
    what any Python grpc.aio server costs per call on this machine."""

    async def infer(request: bytes, context: object) -> bytes:
        return reply

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextmanager
def floor(reply: pb.ModelInferResponse) -> Iterator[tuple[int, int]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--floor-server", str(port), reply.SerializeToString().hex()]
    )
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        _stop(proc)


def have_kserve() -> bool:
    return (
        BENCH_PY.exists()
        and subprocess.run(
            [str(BENCH_PY), "-c", "import kserve, onnxruntime"], capture_output=True
        ).returncode
        == 0
    )


def compile_corpus_model(out: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "neural_dsl",
            "compile",
            str(CORPUS_MODEL),
            "--backend",
            "onnx",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def train_digits(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 64-64-10 Dense network trained on 80% of the digits, exported to ONNX; returns the
    held-out 20% (rows scaled to [0, 1], labels)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    for _ in range(30):
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own internals
        torch.onnx.export(
            net,
            (torch.zeros(2, 64),),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
    return x_test, y_test


def bench_model(
    label: str,
    model: Path,
    rows: np.ndarray,
    args: argparse.Namespace,
    logs: Path,
    with_kserve: bool,
) -> dict[tuple[str, int], Result]:
    s = session(model)
    first = s.run(None, {s.get_inputs()[0].name: rows[:1]})[0]
    reply = pb.ModelInferResponse(model_name=NAME, raw_output_contents=[first.tobytes()])
    reply.outputs.add(name=s.get_outputs()[0].name, datatype="FP32", shape=first.shape)
    with ExitStack() as stack:
        servers = {
            FLOOR: stack.enter_context(floor(reply)),
            OFF: stack.enter_context(replica(model, logs / "replica.log", "--max-batch-size", "1")),
            ON: stack.enter_context(replica(model, logs / "replica.log", *BATCHING)),
        }
        if with_kserve:
            servers[KSERVE] = stack.enter_context(kserve(model, logs / "kserve.log"))
        results = asyncio.run(measure(model, rows, args.requests, args.rounds, servers))
    report(label, results)
    return results


def report(label: str, results: dict[tuple[str, int], Result]) -> None:
    print(f"\n{label}")
    print(
        f"{'target':22s} {'conc':>4s} {'req/s':>8s} {'p50 ms':>7s} {'p99 ms':>7s}"
        f" {'vs in-proc':>10s} {'vs KServe':>9s} {'server us/req':>13s} {'client us/req':>13s}"
    )
    for conc in CONCURRENCY:
        base = results[IN_PROCESS, conc].rps
        peer = results.get((KSERVE, conc))
        for target in (IN_PROCESS, FLOOR, OFF, ON, KSERVE):
            r = results.get((target, conc))
            if r is None:
                continue
            vs_peer = f"{r.rps / peer.rps:8.2f}x" if peer else f"{'-':>9s}"
            client = f"{r.client_us:13.0f}" if r.client_us is not None else f"{'-':>13s}"
            print(
                f"{target:22s} {conc:4d} {r.rps:8.0f} {r.p50:7.2f} {r.p99:7.2f}"
                f" {r.rps / base:9.2f}x {vs_peer} {r.server_us:13.0f} {client}"
            )
    on32, base32 = results[ON, 32], results[IN_PROCESS, 32]
    peer32 = results.get((KSERVE, 32))
    vs_peer = f"{on32.rps / peer32.rps:.2f}x KServe" if peer32 else "no KServe"
    cpu = f"server CPU per request at concurrency 32: replica (batching on) {on32.server_us:.0f} us"
    if peer32:
        cpu += f", KServe {peer32.server_us:.0f} us ({peer32.server_us / on32.server_us:.2f}x)"
    over_on = results[ON, 1].p99 - results[IN_PROCESS, 1].p99
    over_off = results[OFF, 1].p99 - results[IN_PROCESS, 1].p99
    print(
        f"with batching at concurrency 32: {on32.rps / base32.rps:.2f}x in-process"
        f" (target >= 0.7x), {vs_peer} (target >= 2x); p99 at concurrency 1: +{over_on:.2f} ms"
        f" over in-process (batching off: +{over_off:.2f} ms; target <= 2 ms)"
    )
    print(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per target and case")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved chunks the requests make")
    ap.add_argument("--floor-server", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_server:
        asyncio.run(floor_server(int(args.floor_server[0]), bytes.fromhex(args.floor_server[1])))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="neural-bench-predict-"))
    with_kserve = have_kserve()
    print(
        f"{args.requests} 1-row requests per target and concurrency in {args.rounds} interleaved"
        " round(s), loopback, one client process,"
        f" {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.2f} at start);"
        f" batching on: {' '.join(BATCHING)}"
    )
    if not with_kserve:
        print("kserve not installed in .venv-bench (make bench-deps): no KServe column")

    mnist = tmp / "mnist.onnx"
    compile_corpus_model(mnist)
    rng = np.random.default_rng(0)
    rows = rng.random((256, 28, 28, 1), dtype=np.float32)
    bench_model(
        f"corpus CNN ({CORPUS_MODEL.name}: Conv2D 32 3x3, MaxPool, Dense 128, 10; input 28x28x1)",
        mnist,
        rows,
        args,
        tmp,
        with_kserve,
    )

    digits = tmp / "digits.onnx"
    x_test, y_test = train_digits(digits)
    bench_model(
        "digits Dense 64-64-10 (trained here on sklearn digits; input 64)",
        digits,
        x_test,
        args,
        tmp,
        with_kserve,
    )
    reqs = requests_for(digits, x_test)
    with replica(digits, tmp / "replica.log", *BATCHING) as (port, _):
        served_labels = asyncio.run(predictions(port, reqs))
    local = session(digits).run(None, {"input": x_test})[0].argmax(axis=1)
    print(
        "digits served by the replica (batching on): accuracy"
        f" {np.mean(served_labels == y_test):.4f}"
        f" on {len(y_test)} held-out digits; {int(np.sum(served_labels == local))}/{len(y_test)}"
        " predictions equal to in-process onnxruntime's"
    )
    shutil.rmtree(tmp)  # kept when the run fails: the servers' logs are there
    return 0


if __name__ == "__main__":
    sys.exit(main())
