"""Deployments under load from NVIDIA's tritonclient, through the real gateway: the whole
platform behind Envoy (tests/gateway/harness.py), predictions routed by Envoy straight to the
replicas the deployer's controller lists in the cluster file, one locality per version weighted
by its traffic.

tritonclient runs from `.venv-clients` (it needs protobuf < 7) as a subprocess,
tests/deployer/clients/triton_load.py: threads calling `infer` with gRPC's own retry policy
(UNAVAILABLE retried) on the channel. Scaling 1 -> 3 -> 1, a promotion, a rollback, and a
SIGKILL of one of two replicas all happen while it runs, and none of its requests fails; a 20 %
canary answers 20 +/- 5 % of 1000 requests; a deleted deployment leaves no process, no port
listening and no cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from neural.v1 import compiler_pb2, compiler_pb2_grpc, deployer_pb2, deployer_pb2_grpc

from tests.deployer.conftest import DENSE, ROOT
from tests.deployer.test_deployer_e2e import listening, replica_pids
from tests.gateway.harness import Platform, start_platform
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 14
SERVERS = {
    "compiler": "services.compiler",
    "deployer": "services.deployer",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}
# Far above what the loads send: these tests are about serving, not the rate limiter.
LIMITS = {
    "domain": "neural",
    "window_seconds": 60,
    "roles": {role: {"requests": 1_000_000} for role in ("viewer", "user", "admin")},
    "default_role": "viewer",
    "anonymous": {"requests": 1_000_000},
}
# The same network with another hidden width: the same input and output, other weights.
DENSE_V2 = DENSE.replace("Dense(16,", "Dense(12,")
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
LOAD = Path(__file__).parent / "clients" / "triton_load.py"
SERVING = deployer_pb2.DEPLOYMENT_VERSION_STATE_SERVING
RETIRED = deployer_pb2.DEPLOYMENT_VERSION_STATE_RETIRED
WAIT = 180  # seconds for anything to happen: the machine may be busy with other tests
STEP = 20  # requests answered before, between and after the changes made under load


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(f"{CLIENTS_PYTHON} is missing: run make setup")
    tmp = tmp_path_factory.mktemp("tritonclient-load")
    limits = tmp / "limits.yaml"
    limits.write_text(yaml.safe_dump(LIMITS))
    with start_platform(
        tmp,
        SERVERS,
        REDIS_DB,
        {"root": "admin"},
        {"NEURAL_RATELIMIT_CONFIG": str(limits)},
        processes={"controller": "services.deployer.controller"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def channel(platform: Platform) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(platform.gateway.address) as ch:
        yield ch


@pytest.fixture(scope="module")
def models(platform: Platform, channel: grpc.Channel) -> dict[str, str]:
    """Two compiled ONNX models of the same shapes (8 -> 4): model id by label."""
    compiler = compiler_pb2_grpc.CompilerServiceStub(channel)
    ids = {}
    for label, source in (("a", DENSE), ("b", DENSE_V2)):
        compiled = compiler.Compile(
            compiler_pb2.CompileRequest(source=source, backend=compiler_pb2.BACKEND_ONNX),
            metadata=platform.metadata("root"),
            timeout=300,
        )
        ids[label] = compiled.model.id
    assert ids["a"] != ids["b"]
    return ids


# ------------------------------------------------------------------ helpers
class Deployer:
    """The deployer's RPCs through the gateway, as the admin key."""

    def __init__(self, platform: Platform, channel: grpc.Channel) -> None:
        self.platform = platform
        self.stub = deployer_pb2_grpc.DeployerServiceStub(channel)
        self.md = platform.metadata("root")

    def call(self, rpc: str, request: Any) -> Any:
        return getattr(self.stub, rpc)(request, metadata=self.md, timeout=120)

    def get(self, name: str) -> Any:
        return self.call("GetDeployment", deployer_pb2.GetDeploymentRequest(id=name))

    def create(self, name: str, model_id: str, replicas: int) -> Any:
        d = deployer_pb2.Deployment(name=name, model_id=model_id, replicas=replicas)
        created = self.call("CreateDeployment", deployer_pb2.CreateDeploymentRequest(deployment=d))
        self.wait_serving(name, replicas)
        return created

    def versions(self, name: str) -> dict[str, tuple[int, int]]:
        """Version id -> (traffic percent, state)."""
        return {v.id: (v.traffic_percent, v.state) for v in self.get(name).versions}

    def ready(self, name: str) -> int:
        found = self.get(name)
        assert found.state != deployer_pb2.DEPLOYMENT_STATE_FAILED, found.error
        return found.ready_replicas

    def wait_serving(self, name: str, replicas: int) -> set[int]:
        """Until `replicas` replicas are ready, live as processes (no more: the ones stopped
        have exited), listed in the cluster file, and Envoy's endpoints, all healthy; their
        pids."""

        def settled() -> set[int] | None:
            pids = replica_pids(name)
            if len(pids) != replicas or self.ready(name) != replicas:
                return None
            ports = sorted(endpoint_ports(self.platform, name))
            hosts = envoy_hosts(self.platform, name) or {}
            if len(ports) != replicas or sorted(hosts) != ports or not all(hosts.values()):
                return None
            return pids

        try:
            return until(settled, WAIT, f"{name}: {replicas} replicas serving", every=0.25)
        except AssertionError as exc:
            log = self.platform.gateway.log_path.parent.parent / "controller.log"
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None


def envoy_hosts(platform: Platform, name: str) -> dict[int, bool] | None:
    """The endpoints Envoy has for deployment `name`, from its admin: port -> healthy (None:
    Envoy has no such cluster)."""
    url = f"http://127.0.0.1:{platform.gateway.admin_port}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=10) as r:
        statuses = json.load(r).get("cluster_statuses", [])
    for c in statuses:
        if c["name"] == f"deployment.{name}":
            return {
                h["address"]["socket_address"]["port_value"]: _healthy(h["health_status"])
                for h in c.get("host_statuses", [])
            }
    return None


def _healthy(status: dict[str, Any]) -> bool:
    """An Envoy admin host status with no failed or pending check."""
    flags = (v for k, v in status.items() if k != "eds_health_status")
    return status.get("eds_health_status") == "HEALTHY" and not any(flags)


def envoy_retries(platform: Platform, name: str) -> dict[str, int]:
    """Envoy's retries to deployment `name` so far (those that succeeded, overflowed...)."""
    prefix = f"cluster.deployment.{name}.upstream_rq_retry"
    return {k.removeprefix(prefix): v for k, v in platform.gateway.stats(prefix).items()}


def cluster_file(platform: Platform) -> Path:
    return Path(platform.env["NEURAL_ENVOY_DYNAMIC_DIR"]) / "cds.yaml"


def localities(platform: Platform, name: str) -> dict[str, tuple[int, int]] | None:
    """The cluster file's localities of deployment `name`: version -> (weight, endpoints);
    None when the file has no cluster for it."""
    for c in yaml.safe_load(cluster_file(platform).read_text())["resources"]:
        if c["name"] == f"deployment.{name}":
            return {
                loc["locality"]["sub_zone"]: (
                    loc["load_balancing_weight"],
                    len(loc["lb_endpoints"]),
                )
                for loc in c["load_assignment"]["endpoints"]
            }
    return None


def endpoint_ports(platform: Platform, name: str) -> list[int]:
    for c in yaml.safe_load(cluster_file(platform).read_text())["resources"]:
        if c["name"] == f"deployment.{name}":
            return [
                e["endpoint"]["address"]["socket_address"]["port_value"]
                for loc in c["load_assignment"]["endpoints"]
                for e in loc["lb_endpoints"]
            ]
    return []


class TritonLoad:
    """tests/deployer/clients/triton_load.py as a subprocess: `requests` calls, or (with
    `until_stopped`) calls until `finish()`."""

    def __init__(
        self,
        platform: Platform,
        name: str,
        folder: Path,
        requests: int = 0,
        concurrency: int = 4,
        until_stopped: bool = True,
        attempts: int = 5,
    ) -> None:
        self.folder = folder / f"load-{os.urandom(3).hex()}"
        self.folder.mkdir(parents=True)
        self.stop_file = self.folder / "stop"
        self.progress = self.folder / "progress.json"
        inputs = self.folder / "inputs.npz"
        np.savez(inputs, input=np.random.default_rng(3).standard_normal((1, 8)).astype("float32"))
        headers = {"neural-deployment": name, "authorization": f"Bearer {platform.keys['root']}"}
        self.proc = subprocess.Popen(
            [
                str(CLIENTS_PYTHON),
                str(LOAD),
                *("--url", platform.gateway.address, "--model", name),
                *("--inputs", str(inputs), "--requests", str(requests)),
                *("--concurrency", str(concurrency), "--progress", str(self.progress)),
                *("--attempts", str(attempts)),
                *(("--stop-file", str(self.stop_file)) if until_stopped else ()),
                *(arg for k, v in headers.items() for arg in ("--header", f"{k}={v}")),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def done(self) -> int:
        """Calls answered so far (each after its retries)."""
        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise AssertionError(f"the load client failed: {self.proc.stderr.read()[-3000:]}")
        try:
            return json.loads(self.progress.read_text())["done"]
        except FileNotFoundError:
            return 0

    def wait_more(self, count: int = STEP) -> None:
        """Until `count` more calls than now have been answered."""
        target = self.done() + count
        until(lambda: self.done() >= target, WAIT, f"{target} calls answered", every=0.1)

    def finish(self) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=WAIT)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def run_load(platform: Platform, name: str, folder: Path, requests: int) -> dict:
    load = TritonLoad(platform, name, folder, requests, until_stopped=False)
    try:
        return load.finish()
    finally:
        load.kill()


def no_failures(summary: dict) -> bool:
    return summary["failed"] == 0 and summary["succeeded"] == summary["requests"] > 0


def short(summary: dict) -> dict:
    """The summary without its per-request list, for messages."""
    return {k: v for k, v in summary.items() if k != "model_versions"}


@pytest.fixture
def deployer(platform: Platform, channel: grpc.Channel) -> Deployer:
    return Deployer(platform, channel)


# ------------------------------------------------------------------ tests
def test_scale_up_and_down_under_load(
    platform: Platform, deployer: Deployer, models: dict[str, str], tmp_path: Path
) -> None:
    name = "tload-scale"
    deployer.create(name, models["a"], replicas=1)
    first = deployer.wait_serving(name, 1)
    load = TritonLoad(platform, name, tmp_path)
    try:
        load.wait_more()
        deployer.call("ScaleDeployment", deployer_pb2.ScaleDeploymentRequest(id=name, replicas=3))
        up = deployer.wait_serving(name, 3)
        load.wait_more()
        deployer.call("ScaleDeployment", deployer_pb2.ScaleDeploymentRequest(id=name, replicas=1))
        down = deployer.wait_serving(name, 1)
        load.wait_more()
        summary = load.finish()
    finally:
        load.kill()
    print("scale 1 -> 3 -> 1 under load:", short(summary))
    assert no_failures(summary), short(summary)
    assert first < up and len(up) == 3  # two more processes, the first one kept
    assert down < up and len(down) == 1  # two of them stopped
    assert localities(platform, name) == {"v1": (100, 1)}


def test_canary_share_then_promote_and_rollback_under_load(
    platform: Platform, deployer: Deployer, models: dict[str, str], tmp_path: Path
) -> None:
    name = "tload-canary"
    deployer.create(name, models["a"], replicas=1)

    # a 20 % canary of the other model
    deployer.call(
        "RolloutDeployment",
        deployer_pb2.RolloutDeploymentRequest(id=name, model_id=models["b"], traffic_percent=20),
    )
    until(lambda: deployer.versions(name).get("v2") == (20, SERVING), WAIT, "v2 serving")
    until(lambda: localities(platform, name) == {"v1": (80, 1), "v2": (20, 1)}, WAIT)
    deployer.wait_serving(name, 2)
    summary = run_load(platform, name, tmp_path, 1000)
    print("1000 requests with a 20 % canary:", short(summary))
    assert no_failures(summary), short(summary)
    counts = summary["version_counts"]
    assert set(counts) == {"v1", "v2"} and sum(counts.values()) == 1000
    assert 150 <= counts["v2"] <= 250, counts

    # promoted under load: no request fails; v1 retires and v2 answers alone
    load = TritonLoad(platform, name, tmp_path)
    try:
        load.wait_more()
        deployer.call("PromoteDeployment", deployer_pb2.PromoteDeploymentRequest(id=name))
        until(lambda: deployer.versions(name)["v1"] == (0, RETIRED), WAIT, "v1 retired")
        until(lambda: localities(platform, name) == {"v2": (100, 1)}, WAIT)
        deployer.wait_serving(name, 1)
        load.wait_more()
        promoted = load.finish()
    finally:
        load.kill()
    print("promotion under load:", short(promoted), "envoy:", envoy_retries(platform, name))
    assert no_failures(promoted), short(promoted)
    assert set(promoted["version_counts"]) == {"v1", "v2"}
    after = run_load(platform, name, tmp_path, 50)
    assert no_failures(after) and after["version_counts"] == {"v2": 50}, short(after)

    # a new canary (the first model again, v3, at 50 %) rolled back under load
    deployer.call(
        "RolloutDeployment",
        deployer_pb2.RolloutDeploymentRequest(id=name, model_id=models["a"], traffic_percent=50),
    )
    until(lambda: deployer.versions(name).get("v3") == (50, SERVING), WAIT, "v3 serving")
    until(lambda: localities(platform, name) == {"v2": (50, 1), "v3": (50, 1)}, WAIT)
    deployer.wait_serving(name, 2)
    load = TritonLoad(platform, name, tmp_path)
    try:
        load.wait_more()
        deployer.call("RollbackDeployment", deployer_pb2.RollbackDeploymentRequest(id=name))
        until(lambda: deployer.versions(name)["v3"] == (0, RETIRED), WAIT, "v3 retired")
        until(lambda: localities(platform, name) == {"v2": (100, 1)}, WAIT)
        deployer.wait_serving(name, 1)
        load.wait_more()
        rolled_back = load.finish()
    finally:
        load.kill()
    print("rollback under load:", short(rolled_back), "envoy:", envoy_retries(platform, name))
    assert no_failures(rolled_back), short(rolled_back)
    assert set(rolled_back["version_counts"]) == {"v2", "v3"}
    after = run_load(platform, name, tmp_path, 50)
    assert no_failures(after) and after["version_counts"] == {"v2": 50}, short(after)
    assert deployer.versions(name)["v2"] == (100, SERVING)


def test_sigkill_of_one_of_two_replicas_under_load_loses_no_request(
    platform: Platform, deployer: Deployer, models: dict[str, str], tmp_path: Path
) -> None:
    name = "tload-kill"
    deployer.create(name, models["a"], replicas=2)
    before = deployer.wait_serving(name, 2)
    victim = min(before)
    ports = set(endpoint_ports(platform, name))
    load = TritonLoad(platform, name, tmp_path, concurrency=8)
    try:
        load.wait_more()
        os.kill(victim, signal.SIGKILL)
        until(lambda: victim not in replica_pids(name), WAIT, "the killed replica gone")
        # replaced: two ready replicas again, one of them new
        until(lambda: set(endpoint_ports(platform, name)) - ports, WAIT, "a new endpoint")
        after = deployer.wait_serving(name, 2)
        load.wait_more()
        summary = load.finish()
    finally:
        load.kill()
    print("SIGKILL under load:", short(summary), "envoy:", envoy_retries(platform, name))
    assert no_failures(summary), short(summary)
    assert victim not in after and before - {victim} < after


def test_delete_frees_processes_ports_and_the_route(
    platform: Platform, deployer: Deployer, models: dict[str, str], tmp_path: Path
) -> None:
    name = "tload-delete"
    deployer.create(name, models["a"], replicas=2)
    deployer.wait_serving(name, 2)
    ports = endpoint_ports(platform, name)
    assert len(ports) == 2 and all(listening(p) for p in ports)
    served = run_load(platform, name, tmp_path, 10)
    assert no_failures(served), short(served)

    deployer.call("DeleteDeployment", deployer_pb2.DeleteDeploymentRequest(id=name))

    def gone() -> bool:
        try:
            deployer.get(name)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return True
        return False

    until(gone, WAIT, f"{name} deleted", every=0.25)
    until(lambda: not replica_pids(name), WAIT, "its replicas stopped")
    until(lambda: not any(listening(p) for p in ports), WAIT, "its ports free")
    until(lambda: localities(platform, name) is None, WAIT, "its cluster removed")
    until(lambda: envoy_hosts(platform, name) is None, WAIT, "Envoy without its cluster")
    refused = run_load(platform, name, tmp_path, 1)
    # no cluster: Envoy's 404, which gRPC reads as UNIMPLEMENTED
    assert refused["statuses"] == {"StatusCode.UNIMPLEMENTED": 1}, short(refused)
