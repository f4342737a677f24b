"""First call after start against a warm call, for each service's cheap RPCs, in one run.

Each service (compiler, trainer, tracker, deployer, authz, ratelimit) is started as a fresh
process on a free port with SQLite in a folder of its own and a Redis of this run's own. The
script times the process start -> health SERVING, waits until the server logs that its start-up
warm-up is over (what a user who calls a few seconds after start meets; `--at-serving` calls at
SERVING instead), then calls each RPC once (the first call) and five more times (warm: the
median) and prints first/warm per RPC, the medians over `--repeat` fresh processes (one
machine's load moves single calls by milliseconds). Calls carry an internal token
(x-neural-principal) signed by this run's own keypair, as the gateway's would. No worker runs:
SubmitTraining and SubmitCompile only enqueue.

    .venv/bin/python bench/first_call.py [--services compiler,tracker] [--at-serving] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ports import free_port, wait_port  # noqa: E402
from bench.principal import keypair, metadata  # noqa: E402

WARM_CALLS = 5
WARMED = '"warm-up done"'  # the server's log line (service_kit.server)
WARM_FAILED = '"warm-up failed"'
SMALL = 'network Small {\n  input: (16)\n  layers:\n    Dense(32, "relu")\n    Output(4)\n}\n'
DIGITS = """
network Digits {
  input: (64,)
  layers:
    Dense(64, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
}
"""
MODULES = {
    "compiler": "services.compiler",
    "trainer": "services.trainer",
    "tracker": "services.tracker",
    "deployer": "services.deployer",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}

# A case: (RPC name, call(stub, ctx, i) -> response); i = 0 is the first call, 1.. warm ones.
Case = tuple[str, Callable[[Any, dict[str, Any], int], Any]]


@dataclass
class Result:
    service: str
    serving_s: float
    warmed_s: float | None
    rows: list[tuple[str, float, float]]  # (rpc, first ms, warm median ms)


def compiler_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc

    def compile_(s: Any, ctx: dict, i: int) -> Any:
        # a program not compiled before each time: a repeated one is answered from the cache
        source = SMALL.replace("Dense(32", f"Dense({32 + i}")
        r = s.Compile(
            compiler_pb2.CompileRequest(source=source, backend=compiler_pb2.BACKEND_PYTORCH),
            metadata=md,
        )
        ctx.setdefault("model", r.model.id)
        return r

    def submit(s: Any, ctx: dict, i: int) -> Any:
        r = s.SubmitCompile(
            compiler_pb2.CompileRequest(source=SMALL, backend=compiler_pb2.BACKEND_TENSORFLOW),
            metadata=md,
        )
        ctx.setdefault("job", r.id)
        return r

    return compiler_pb2_grpc.CompilerServiceStub, [
        (
            "Validate",
            lambda s, c, i: s.Validate(compiler_pb2.ValidateRequest(source=SMALL), metadata=md),
        ),
        ("Compile", compile_),
        (
            "GetModel",
            lambda s, c, i: s.GetModel(compiler_pb2.GetModelRequest(id=c["model"]), metadata=md),
        ),
        ("ListModels", lambda s, c, i: s.ListModels(compiler_pb2.ListModelsRequest(), metadata=md)),
        ("SubmitCompile", submit),
        (
            "GetCompileJob",
            lambda s, c, i: s.GetCompileJob(common_pb2.GetJobRequest(id=c["job"]), metadata=md),
        ),
        (
            "ListCompileJobs",
            lambda s, c, i: s.ListCompileJobs(common_pb2.ListJobsRequest(), metadata=md),
        ),
    ]


def trainer_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from neural.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc

    digits = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    synthetic = trainer_pb2.DatasetSpec(
        synthetic=trainer_pb2.SyntheticDataset(num_samples=500, num_classes=4, seed=1)
    )

    def submit(s: Any, ctx: dict, i: int) -> Any:
        r = s.SubmitTraining(
            trainer_pb2.SubmitTrainingRequest(source=DIGITS, dataset=digits, epochs=1), metadata=md
        )
        ctx.setdefault("job", r.id)
        return r

    return trainer_pb2_grpc.TrainerServiceStub, [
        ("SubmitTraining", submit),
        (
            "SubmitTraining synthetic",
            lambda s, c, i: s.SubmitTraining(
                trainer_pb2.SubmitTrainingRequest(source=SMALL, dataset=synthetic, epochs=1),
                metadata=md,
            ),
        ),
        (
            "GetTrainingJob",
            lambda s, c, i: s.GetTrainingJob(common_pb2.GetJobRequest(id=c["job"]), metadata=md),
        ),
        (
            "ListTrainingJobs",
            lambda s, c, i: s.ListTrainingJobs(common_pb2.ListJobsRequest(), metadata=md),
        ),
        (
            "ListDatasets",
            lambda s, c, i: s.ListDatasets(trainer_pb2.ListDatasetsRequest(), metadata=md),
        ),
        (
            "ListWorkers",
            lambda s, c, i: s.ListWorkers(trainer_pb2.ListWorkersRequest(), metadata=md),
        ),
    ]


def tracker_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from neural.v1 import tracker_pb2, tracker_pb2_grpc

    def experiment(s: Any, ctx: dict, i: int) -> Any:
        r = s.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=f"e{i}")),
            metadata=md,
        )
        ctx.setdefault("exp", r.id)
        return r

    def run(s: Any, ctx: dict, i: int) -> Any:
        r = s.CreateRun(
            tracker_pb2.CreateRunRequest(
                experiment_id=ctx["exp"], run=tracker_pb2.Run(name=f"r{i}", tags={"t": "x"})
            ),
            metadata=md,
        )
        ctx.setdefault("runs", []).append(r.id)
        return r

    def log(s: Any, ctx: dict, i: int) -> Any:
        points = [tracker_pb2.Metric(key=k, value=0.5 + i / 100, step=i) for k in ("acc", "loss")]
        return s.LogMetrics(
            tracker_pb2.LogMetricsRequest(run_id=ctx["runs"][0], metrics=points), metadata=md
        )

    return tracker_pb2_grpc.TrackerServiceStub, [
        ("CreateExperiment", experiment),
        ("CreateRun", run),
        (
            "LogParams",
            lambda s, c, i: s.LogParams(
                tracker_pb2.LogParamsRequest(run_id=c["runs"][0], params={f"p{i}": "1"}),
                metadata=md,
            ),
        ),
        ("LogMetrics", log),
        (
            "GetRun",
            lambda s, c, i: s.GetRun(tracker_pb2.GetRunRequest(id=c["runs"][0]), metadata=md),
        ),
        (
            "SearchRuns",
            lambda s, c, i: s.SearchRuns(
                tracker_pb2.SearchRunsRequest(
                    experiment_ids=[c["exp"]], filter="metrics.acc > 0.1"
                ),
                metadata=md,
            ),
        ),
        (
            "GetMetricHistory",
            lambda s, c, i: s.GetMetricHistory(
                tracker_pb2.GetMetricHistoryRequest(run_id=c["runs"][0], key="acc"), metadata=md
            ),
        ),
        (
            "PlotMetrics",
            lambda s, c, i: s.PlotMetrics(
                tracker_pb2.PlotMetricsRequest(run_ids=c["runs"][:1], keys=["acc", "loss"]),
                metadata=md,
            ),
        ),
        (
            "ListExperiments",
            lambda s, c, i: s.ListExperiments(tracker_pb2.ListExperimentsRequest(), metadata=md),
        ),
    ]


def deployer_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from neural.v1 import common_pb2, deployer_pb2, deployer_pb2_grpc

    return deployer_pb2_grpc.DeployerServiceStub, [
        (
            "ListDeployments",
            lambda s, c, i: s.ListDeployments(deployer_pb2.ListDeploymentsRequest(), metadata=md),
        ),
        (
            "ListRolloutJobs",
            lambda s, c, i: s.ListRolloutJobs(common_pb2.ListJobsRequest(), metadata=md),
        ),
    ]


def authz_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from envoy.service.auth.v3 import external_auth_pb2
    from neural.v1 import auth_pb2, auth_pb2_grpc

    class Stubs:
        def __init__(self, channel: grpc.Channel) -> None:
            from envoy.service.auth.v3 import external_auth_pb2_grpc

            self.auth = auth_pb2_grpc.AuthServiceStub(channel)
            self.check = external_auth_pb2_grpc.AuthorizationStub(channel)

    def create(s: Stubs, ctx: dict, i: int) -> Any:
        r = s.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(name=f"k{i}", role=auth_pb2.ROLE_USER), metadata=md
        )
        ctx.setdefault("keys", []).append(r.key)
        return r

    def check(s: Stubs, ctx: dict, i: int) -> Any:
        # each call a key not checked before: the same work as the first call, no cache hit
        request = external_auth_pb2.CheckRequest()
        http = request.attributes.request.http
        http.method, http.path = "POST", "/neural.v1.CompilerService/Validate"
        http.headers["authorization"] = f"Bearer {ctx['keys'][i]}"
        r = s.check.Check(request)
        assert r.HasField("ok_response"), r
        return r

    return Stubs, [
        ("CreateApiKey", create),
        ("Check", check),
        ("WhoAmI", lambda s, c, i: s.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md)),
        (
            "ListApiKeys",
            lambda s, c, i: s.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=md),
        ),
        (
            "ListAuditEvents",
            lambda s, c, i: s.auth.ListAuditEvents(auth_pb2.ListAuditEventsRequest(), metadata=md),
        ),
    ]


def ratelimit_cases(md: Any) -> tuple[Callable[[grpc.Channel], Any], list[Case]]:
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    def ask(s: Any, ctx: dict, i: int) -> Any:
        req = rls_pb2.RateLimitRequest(domain="neural")
        req.descriptors.add().entries.add(key="subject", value=f"bench-{i}")
        return s.ShouldRateLimit(req)

    return rls_pb2_grpc.RateLimitServiceStub, [("ShouldRateLimit", ask)]


CASES = {
    "compiler": compiler_cases,
    "trainer": trainer_cases,
    "tracker": tracker_cases,
    "deployer": deployer_cases,
    "authz": authz_cases,
    "ratelimit": ratelimit_cases,
}


def wait_serving(address: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.01)
    raise TimeoutError(f"not serving:\n{log.read_text()[-3000:]}")


def wait_warmed(log: Path, timeout: float = 120) -> bool:
    """Until the server logs the end of its warm-up; False if it has none (no line within
    `timeout`) or it failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if WARMED in text:
            return True
        if WARM_FAILED in text:
            print(f"  warm-up failed: {log}", file=sys.stderr)
            return False
        time.sleep(0.02)
    return False


def combined(runs: list[Result]) -> Result:
    """The medians of the same service's runs."""
    warmed = [r.warmed_s for r in runs if r.warmed_s is not None]
    rows = [
        (
            rpc,
            statistics.median(r.rows[i][1] for r in runs),
            statistics.median(r.rows[i][2] for r in runs),
        )
        for i, (rpc, _, _) in enumerate(runs[0].rows)
    ]
    return Result(
        runs[0].service,
        statistics.median(r.serving_s for r in runs),
        statistics.median(warmed) if len(warmed) == len(runs) else None,
        rows,
    )


def measure(
    service: str, base_env: dict[str, str], tmp: Path, md: Any, at_serving: bool, n: int
) -> Result:
    folder = tmp / f"{service}-{n}"
    folder.mkdir()
    port = free_port()
    env = {
        **base_env,
        "NEURAL_DATA_DIR": str(folder),
        f"NEURAL_{service.upper()}_PORT": str(port),
        f"NEURAL_{service.upper()}_METRICS_PORT": "0",
    }
    log = folder / "server.log"
    address = f"127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULES[service]],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(address, proc, log)
        serving = time.perf_counter() - started
        warmed = None
        if not at_serving and wait_warmed(log, timeout=60):
            warmed = time.perf_counter() - started
        make_stub, cases = CASES[service](md)
        ctx: dict[str, Any] = {}
        rows = []
        with grpc.insecure_channel(address) as channel:
            # the channel's own connection is made first: not the server's first-call cost
            grpc.channel_ready_future(channel).result(timeout=10)
            stub = make_stub(channel)
            firsts = {}
            for name, call in cases:
                t = time.perf_counter()
                call(stub, ctx, 0)
                firsts[name] = time.perf_counter() - t
            for name, call in cases:
                times = []
                for i in range(1, WARM_CALLS + 1):
                    t = time.perf_counter()
                    call(stub, ctx, i)
                    times.append(time.perf_counter() - t)
                rows.append((name, firsts[name] * 1e3, statistics.median(times) * 1e3))
        return Result(service, serving, warmed, rows)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", default=",".join(MODULES), help="comma-separated")
    ap.add_argument(
        "--at-serving", action="store_true", help="call at SERVING, not after the warm-up"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="fresh processes per service (medians shown)"
    )
    args = ap.parse_args()
    services = [s for s in args.services.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="neural-bench-first-"))
    redis_port = free_port()
    redis_server = [shutil.which("redis-server") or "redis-server", "--port", str(redis_port)]
    redis_proc = subprocess.Popen(
        [*redis_server, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        wait_port(redis_port)
        private, public = keypair(tmp / "keys")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NEURAL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "NEURAL_AUTHZ_PUBLIC_KEY_FILE": str(public),
            "NEURAL_AUTHZ_PRIVATE_KEY_FILE": str(private),
            "NEURAL_PAGE_TOKEN_SECRET": "bench-" + "x" * 32,
            "NEURAL_LOG_LEVEL": "INFO",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        env.pop("NEURAL_DATABASE_URL", None)
        md = metadata(private, "bench", "admin")
        results = [
            combined([measure(s, env, tmp, md, args.at_serving, n) for n in range(args.repeat)])
            for s in services
        ]
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
    when = "at SERVING" if args.at_serving else "after the warm-up"
    print(
        f"first call {when} vs the median of {WARM_CALLS} warm calls; medians of "
        f"{args.repeat} fresh processes per service"
    )
    print(f"{'service':10s} {'rpc':26s} {'first ms':>9s} {'warm ms':>8s} {'first/warm':>10s}")
    worst = 0.0
    for r in results:
        warmed = f"{r.warmed_s:.2f} s" if r.warmed_s is not None else "no warm-up logged"
        print(f"{r.service}: start -> SERVING {r.serving_s:.2f} s, warm-up done {warmed}")
        for rpc, first, warm in r.rows:
            ratio = first / warm
            worst = max(worst, ratio)
            print(f"{'':10s} {rpc:26s} {first:9.1f} {warm:8.1f} {ratio:9.1f}x")
    print(f"worst first/warm: {worst:.1f}x (target <= 2x)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
