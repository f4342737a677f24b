"""The deployer end to end, as real processes on PostgreSQL: the tracker and the compiler (where
models come from), the deployer's server and its controller, which runs replica processes.

A deployment made from a compiled ONNX model or a run's artifact becomes READY and predicts
exactly what onnxruntime computes in process; scaling changes the live replicas; a killed
replica is replaced; delete frees processes, ports and files; owners see only their own; every
bad input is the caller's error, naming the field."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import redis
import yaml
from google.protobuf import struct_pb2
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    deployer_pb2,
    deployer_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

from tests import tokens
from tests.deployer.conftest import DENSE
from tests.services.conftest import REDIS_PORT, create_pg_database, drop_pg_database, free_port
from tests.services.stack import Stack, make_stack
from tests.services.trainer_stack import TrainerStack
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 13
SERVICES = ("tracker", "compiler", "deployer")
PEOPLE = {"alice": ("alice", "user"), "bob": ("bob", "user"), "admin": ("root", "admin")}
READY = deployer_pb2.DEPLOYMENT_STATE_READY


class DeployerStack(TrainerStack):
    """The services as processes, plus the controller, which can be killed and restarted."""

    def start_controller(self) -> None:
        self.start("controller", [sys.executable, "-m", "services.deployer.controller"])

    def kill_controller(self) -> None:
        proc = self.procs.pop("controller")
        proc.kill()
        proc.wait()

    @property
    def storage(self) -> Path:
        return Path(self.env["NEURAL_STORAGE_DIR"])

    @property
    def cds(self) -> Path:
        return Path(self.env["NEURAL_ENVOY_DYNAMIC_DIR"]) / "cds.yaml"

    def deployer(self) -> deployer_pb2_grpc.DeployerServiceStub:
        return deployer_pb2_grpc.DeployerServiceStub(self.channel("deployer"))

    def compiler(self) -> compiler_pb2_grpc.CompilerServiceStub:
        return compiler_pb2_grpc.CompilerServiceStub(self.channel("compiler"))

    def tracker(self) -> tracker_pb2_grpc.TrackerServiceStub:
        return tracker_pb2_grpc.TrackerServiceStub(self.channel("tracker"))

    def channel(self, name: str) -> grpc.Channel:
        channels = self.__dict__.setdefault("_channels", {})
        if name not in channels:
            channels[name] = grpc.insecure_channel(self.address_of(name))
        return channels[name]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeployerStack]:
    tmp = tmp_path_factory.mktemp("deployer-e2e")
    name, url = asyncio.run(create_pg_database())
    redis.Redis(port=REDIS_PORT, db=REDIS_DB).flushdb()
    base = make_stack(tmp, url, REDIS_DB, "deployer")
    s = DeployerStack(base.env, base.port, base.metrics_port, logs=tmp)
    s.ports = {"deployer": base.port, "tracker": free_port(), "compiler": free_port()}
    for service, port in s.ports.items():
        s.env[f"NEURAL_{service.upper()}_PORT"] = str(port)
        s.env[f"NEURAL_{service.upper()}_METRICS_PORT"] = str(free_port())
        s.env[f"NEURAL_{service.upper()}_ADDRESS"] = f"127.0.0.1:{port}"
    s.env["NEURAL_ENVOY_DYNAMIC_DIR"] = str(tmp / "envoy-dynamic")
    s.env["NEURAL_GATEWAY_URL"] = "http://gateway.test:8080"
    # autoscaled deployments (test_deployer_autoscale_e2e): 2 in flight a replica, a short
    # cooldown
    s.env["NEURAL_DEPLOYER_TARGET_INFLIGHT"] = "2"
    s.env["NEURAL_DEPLOYER_SCALE_DOWN_COOLDOWN_S"] = "2"
    s.keys = {label: tokens.sign(*who) for label, who in PEOPLE.items()}
    try:
        for service in SERVICES:
            s.start_service(service)
        s.start_controller()
        for service in SERVICES:
            s.wait_service(service)
        yield s
    finally:
        for ch in s.__dict__.get("_channels", {}).values():
            ch.close()
        s.stop_all()
        asyncio.run(drop_pg_database(name))


# ------------------------------------------------------------------ helpers
def replica_pids(name: str) -> set[int]:
    """The live replica processes serving deployment `name`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"services.deployer.replica" in args and name.encode() in args:
            found.add(int(entry.name))
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def cluster_ports(stack: Stack, name: str) -> list[int] | None:
    """The ports cds.yaml lists for deployment `name` (None: no cluster)."""
    path = Path(stack.env["NEURAL_ENVOY_DYNAMIC_DIR"]) / "cds.yaml"
    if not path.exists():
        return None
    for c in yaml.safe_load(path.read_text())["resources"]:
        if c["name"] == f"deployment.{name}":
            return sorted(
                e["endpoint"]["address"]["socket_address"]["port_value"]
                for loc in c["load_assignment"]["endpoints"]
                for e in loc["lb_endpoints"]
            )
    return None


def compile_model(stack: DeployerStack, backend: int, who: str = "alice") -> str:
    r = stack.compiler().Compile(
        compiler_pb2.CompileRequest(source=DENSE, backend=backend),
        metadata=stack.meta(who),
        timeout=240,
    )
    return r.model.id


def upload_artifact(stack: DeployerStack, path: Path, who: str = "alice") -> str:
    t = stack.tracker()
    exp = t.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(
            experiment=tracker_pb2.Experiment(name=f"deploy-{os.urandom(4).hex()}")
        ),
        metadata=stack.meta(who),
    )
    run = t.CreateRun(tracker_pb2.CreateRunRequest(experiment_id=exp.id), metadata=stack.meta(who))
    data = path.read_bytes()

    def chunks() -> Iterator[tracker_pb2.ArtifactChunk]:
        yield tracker_pb2.ArtifactChunk(
            run_id=run.id,
            path="model/model.onnx",
            chunk=common_pb2.Chunk(
                data=data,
                offset=0,
                total_size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            ),
        )

    t.UploadArtifact(chunks(), metadata=stack.meta(who))
    return run.id


def deployment(name: str, replicas: int = 1, **model: Any) -> deployer_pb2.Deployment:
    d = deployer_pb2.Deployment(name=name, replicas=replicas)
    if "model_id" in model:
        d.model_id = model["model_id"]
    else:
        d.run_artifact.run_id, d.run_artifact.path = model["run_id"], model["path"]
    return d


def create(stack: DeployerStack, d: deployer_pb2.Deployment, who: str = "alice") -> Any:
    return stack.deployer().CreateDeployment(
        deployer_pb2.CreateDeploymentRequest(deployment=d), metadata=stack.meta(who), timeout=120
    )


def get(stack: DeployerStack, deployment_id: str, who: str = "alice") -> Any:
    return stack.deployer().GetDeployment(
        deployer_pb2.GetDeploymentRequest(id=deployment_id), metadata=stack.meta(who)
    )


def wait_ready(stack: DeployerStack, deployment_id: str, replicas: int = 1) -> Any:
    found: list[Any] = []

    def ready() -> bool:
        found[:] = [get(stack, deployment_id, "admin")]
        d = found[0]
        assert d.state != deployer_pb2.DEPLOYMENT_STATE_FAILED, d.error
        return d.state == READY and d.ready_replicas == replicas

    until(ready, 120, f"{deployment_id} READY with {replicas} replicas\n" + stack.log("controller"))
    return found[0]


def error_of(call: Any, request: Any, metadata: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata, timeout=120)
    return info.value


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def instances(x: np.ndarray) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    out.extend(x.astype(np.float64).tolist())
    return out


def in_process(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def onnx_model_id(stack: DeployerStack) -> str:
    return compile_model(stack, compiler_pb2.BACKEND_ONNX)


@pytest.fixture(scope="module")
def served(stack: DeployerStack, onnx_model_id: str) -> Any:
    """A READY deployment of the compiled dense model, owned by alice."""
    d = create(stack, deployment("dense-e2e", model_id=onnx_model_id))
    assert d.state == deployer_pb2.DEPLOYMENT_STATE_PENDING
    return wait_ready(stack, d.id)


# ------------------------------------------------------------------ tests
def test_a_compiled_model_serves_what_onnxruntime_computes(
    stack: DeployerStack, served: Any, onnx_model_id: str
) -> None:
    assert served.owner == "alice" and served.model_id == onnx_model_id
    assert served.model_version == "v1" and served.ready_replicas == 1
    assert served.endpoint == f"http://gateway.test:8080/v1/deployments/{served.id}:predict"
    [v1] = served.versions
    assert (v1.id, v1.traffic_percent) == ("v1", 100)
    assert v1.state == deployer_pb2.DEPLOYMENT_VERSION_STATE_SERVING
    model = stack.storage / "deployments" / served.id / "v1" / "model.onnx"
    x = rows(5)
    expected = in_process(model, x)
    r = stack.deployer().Predict(
        deployer_pb2.PredictRequest(id=served.id, instances=instances(x)),
        metadata=stack.meta("alice"),
    )
    assert r.model_version == "v1"
    got = np.asarray([list(p) for p in r.predictions], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    [out] = r.outputs
    assert list(out.shape) == [5, 4] and out.dtype == "float32"
    np.testing.assert_array_equal(np.asarray(out.float_data, np.float32).reshape(5, 4), expected)
    # typed tensors, the input's name left out for a single-input model
    typed = stack.deployer().Predict(
        deployer_pb2.PredictRequest(
            id=served.id,
            inputs=[deployer_pb2.Tensor(shape=[5, 8], dtype="float32", float_data=x.ravel())],
        ),
        metadata=stack.meta("alice"),
    )
    assert len(typed.predictions.values) == 0
    np.testing.assert_array_equal(
        np.asarray(typed.outputs[0].float_data, np.float32).reshape(5, 4), expected
    )
    # the cluster file lists the one ready replica
    until(lambda: len(cluster_ports(stack, "dense-e2e") or []) == 1)
    assert len(replica_pids("dense-e2e")) == 1
    [port] = cluster_ports(stack, "dense-e2e") or []
    assert listening(port)


def test_a_run_artifact_deploys_as_the_caller(stack: DeployerStack, onnx_models: dict) -> None:
    run_id = upload_artifact(stack, onnx_models["dense"])
    ref = {"run_id": run_id, "path": "model/model.onnx"}
    # bob may not read alice's run: the tracker answers NOT_FOUND, as the deployer does
    err = error_of(
        stack.deployer().CreateDeployment,
        deployer_pb2.CreateDeploymentRequest(deployment=deployment("from-run-bob", **ref)),
        stack.meta("bob"),
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    d = create(stack, deployment("from-run", **ref))
    d = wait_ready(stack, d.id)
    assert (d.run_artifact.run_id, d.run_artifact.path) == (run_id, "model/model.onnx")
    x = rows(3, seed=1)
    r = stack.deployer().Predict(
        deployer_pb2.PredictRequest(id=d.id, instances=instances(x)), metadata=stack.meta("alice")
    )
    got = np.asarray([list(p) for p in r.predictions], dtype=np.float32)
    np.testing.assert_array_equal(got, in_process(onnx_models["dense"], x))
    stack.deployer().DeleteDeployment(
        deployer_pb2.DeleteDeploymentRequest(id=d.id), metadata=stack.meta("alice")
    )


def test_scaling_changes_the_live_replicas(stack: DeployerStack, served: Any) -> None:
    scale = stack.deployer().ScaleDeployment
    alice = stack.meta("alice")
    d = scale(deployer_pb2.ScaleDeploymentRequest(id=served.id, replicas=3), metadata=alice)
    assert d.replicas == 3
    wait_ready(stack, served.id, 3)
    until(lambda: len(replica_pids("dense-e2e")) == 3)
    until(lambda: len(cluster_ports(stack, "dense-e2e") or []) == 3)
    ports = cluster_ports(stack, "dense-e2e") or []
    assert all(listening(p) for p in ports)
    scale(deployer_pb2.ScaleDeploymentRequest(id=served.id, replicas=1), metadata=alice)
    wait_ready(stack, served.id, 1)
    until(lambda: len(replica_pids("dense-e2e")) == 1, 60, "two replicas stopped")
    until(lambda: len(cluster_ports(stack, "dense-e2e") or []) == 1)
    [kept] = cluster_ports(stack, "dense-e2e") or []
    assert kept in ports
    until(lambda: sum(listening(p) for p in ports) == 1, 60, "stopped replicas' ports closed")


def test_a_killed_replica_is_replaced(stack: DeployerStack, served: Any) -> None:
    wait_ready(stack, served.id, 1)
    until(lambda: len(cluster_ports(stack, "dense-e2e") or []) == 1)
    [pid] = replica_pids("dense-e2e")
    os.kill(pid, signal.SIGKILL)
    until(lambda: replica_pids("dense-e2e") - {pid}, 60, "a new replica")
    # READY stays; while no replica is ready, Predict answers UNAVAILABLE: try again
    assert get(stack, served.id).state == READY

    def answered() -> bool:
        try:
            stack.deployer().Predict(
                deployer_pb2.PredictRequest(id=served.id, instances=instances(rows(1))),
                metadata=stack.meta("alice"),
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            return False
        return True

    until(answered, 60, "a prediction from the replacement")
    wait_ready(stack, served.id, 1)
    r = stack.deployer().Predict(
        deployer_pb2.PredictRequest(id=served.id, instances=instances(rows(2))),
        metadata=stack.meta("alice"),
    )
    assert len(r.predictions.values) == 2


def test_owners_see_only_their_own(stack: DeployerStack, served: Any) -> None:
    s = stack.deployer()
    bob = stack.meta("bob")
    for call, request in (
        (s.GetDeployment, deployer_pb2.GetDeploymentRequest(id=served.id)),
        (s.DeleteDeployment, deployer_pb2.DeleteDeploymentRequest(id=served.id)),
        (s.ScaleDeployment, deployer_pb2.ScaleDeploymentRequest(id=served.id, replicas=2)),
        (
            s.Predict,
            deployer_pb2.PredictRequest(id=served.id, instances=instances(rows(1))),
        ),
    ):
        assert error_of(call, request, bob).code() == grpc.StatusCode.NOT_FOUND
    listed = s.ListDeployments(deployer_pb2.ListDeploymentsRequest(), metadata=bob)
    assert served.id not in [d.id for d in listed.deployments]
    mine = s.ListDeployments(deployer_pb2.ListDeploymentsRequest(), metadata=stack.meta("alice"))
    assert served.id in [d.id for d in mine.deployments]
    everyone = s.ListDeployments(
        deployer_pb2.ListDeploymentsRequest(), metadata=stack.meta("admin")
    )
    assert served.id in [d.id for d in everyone.deployments]
    # a viewer may look but not change
    viewer = tokens.meta(tokens.sign("alice", "viewer"))
    assert s.GetDeployment(deployer_pb2.GetDeploymentRequest(id=served.id), metadata=viewer)
    err = error_of(
        s.ScaleDeployment, deployer_pb2.ScaleDeploymentRequest(id=served.id, replicas=2), viewer
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_bad_requests_name_the_field(
    stack: DeployerStack, served: Any, onnx_model_id: str, onnx_models: dict
) -> None:
    s = stack.deployer()
    alice = stack.meta("alice")

    def refused(d: deployer_pb2.Deployment) -> grpc.RpcError:
        return error_of(
            s.CreateDeployment, deployer_pb2.CreateDeploymentRequest(deployment=d), alice
        )

    err = refused(deployment("Not_A_Label", model_id=onnx_model_id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deployment.name" in err.details()
    err = refused(deployment("too-many", replicas=101, model_id=onnx_model_id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deployment.replicas" in err.details()
    err = refused(deployment("no-such-model", model_id="0" * 32))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "deployment.model_id" in err.details()
    torch_id = compile_model(stack, compiler_pb2.BACKEND_PYTORCH)
    err = refused(deployment("torch", model_id=torch_id))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deployment.model_id" in err.details()
    assert "only ONNX" in err.details()
    err = refused(deployer_pb2.Deployment(name="no-model"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "deployment.model" in err.details()
    err = refused(deployment("dense-e2e", model_id=onnx_model_id))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    # a file onnxruntime cannot load: refused with its reason, nothing left behind
    before = sorted((stack.storage / "deployments").iterdir())
    run_id = upload_artifact(stack, onnx_models["broken"])
    err = refused(deployment("broken", run_id=run_id, path="model/model.onnx"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
    assert "onnxruntime cannot load the model" in err.details()
    assert sorted((stack.storage / "deployments").iterdir()) == before
    err = refused(deployment("missing-file", run_id=run_id, path="model/nothing.onnx"))
    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
    # scale out of range; unknown deployment
    err = error_of(
        s.ScaleDeployment, deployer_pb2.ScaleDeploymentRequest(id=served.id, replicas=-1), alice
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "replicas" in err.details()
    err = error_of(s.GetDeployment, deployer_pb2.GetDeploymentRequest(id="nope"), alice)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    # predictions: the replica's complaint about the input is the caller's error
    wait_ready(stack, served.id)
    for request, field in (
        (deployer_pb2.PredictRequest(id=served.id), "inputs"),
        (
            deployer_pb2.PredictRequest(id=served.id, instances=instances(rows(2)[:, :5])),
            "",
        ),
        (
            deployer_pb2.PredictRequest(
                id=served.id,
                inputs=[deployer_pb2.Tensor(shape=[2, 8], dtype="float32", float_data=[1.0])],
            ),
            "inputs[0].shape",
        ),
        (
            deployer_pb2.PredictRequest(
                id=served.id,
                inputs=[deployer_pb2.Tensor(shape=[1, 8], dtype="float16", float_data=[1.0] * 8)],
            ),
            "inputs[0].dtype",
        ),
    ):
        err = error_of(s.Predict, request, alice)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert field in err.details()
    bad_row = struct_pb2.ListValue()
    bad_row.append([1.0] * 7 + [float("nan")])
    err = error_of(s.Predict, deployer_pb2.PredictRequest(id=served.id, instances=bad_row), alice)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instances[0][7]" in err.details()


def test_delete_frees_processes_ports_and_files(stack: DeployerStack, onnx_model_id: str) -> None:
    d = create(stack, deployment("doomed", replicas=2, model_id=onnx_model_id))
    wait_ready(stack, d.id, 2)
    until(lambda: len(cluster_ports(stack, "doomed") or []) == 2)
    ports = cluster_ports(stack, "doomed") or []
    pids = replica_pids("doomed")
    assert len(pids) == 2 and (stack.storage / "deployments" / d.id).is_dir()
    gone = stack.deployer().DeleteDeployment(
        deployer_pb2.DeleteDeploymentRequest(id=d.id), metadata=stack.meta("alice")
    )
    assert gone.state == deployer_pb2.DEPLOYMENT_STATE_DELETING

    def not_found() -> bool:
        with contextlib.suppress(grpc.RpcError):
            get(stack, d.id)
            return False
        return True

    until(not_found, 60, "the deployment gone\n" + stack.log("controller"))
    assert replica_pids("doomed") == set()
    assert not any(listening(p) for p in ports)
    assert not (stack.storage / "deployments" / d.id).exists()
    until(lambda: cluster_ports(stack, "doomed") is None)
    # the name is free again
    again = create(stack, deployment("doomed", replicas=0, model_id=onnx_model_id))
    stack.deployer().DeleteDeployment(
        deployer_pb2.DeleteDeploymentRequest(id=again.id), metadata=stack.meta("alice")
    )


def test_named_inputs_of_two_types_and_every_output(
    stack: DeployerStack, onnx_models: dict
) -> None:
    run_id = upload_artifact(stack, onnx_models["multi"])
    d = create(stack, deployment("multi", run_id=run_id, path="model/model.onnx"))
    wait_ready(stack, d.id)
    a = np.arange(8, dtype=np.float32).reshape(2, 4) / 4
    b = np.asarray([[1, -2], [3, 4]], np.int64)
    r = stack.deployer().Predict(
        deployer_pb2.PredictRequest(
            id=d.id,
            inputs=[
                deployer_pb2.Tensor(name="b", shape=[2, 2], dtype="int64", int64_data=b.ravel()),
                deployer_pb2.Tensor(name="a", shape=[2, 4], dtype="float32", float_data=a.ravel()),
            ],
        ),
        metadata=stack.meta("alice"),
    )
    out = {t.name: t for t in r.outputs}
    assert set(out) == {"doubled", "squared", "half"}
    np.testing.assert_array_equal(np.asarray(out["doubled"].float_data).reshape(2, 4), 2 * a)
    np.testing.assert_array_equal(np.asarray(out["squared"].int64_data).reshape(2, 2), b * b)
    assert out["half"].dtype == "float32"  # FP16 answers widen to float32
    np.testing.assert_array_equal(np.asarray(out["half"].float_data).reshape(2, 4), a)
    err = error_of(
        stack.deployer().Predict,
        deployer_pb2.PredictRequest(id=d.id, instances=instances(rows(1))),
        stack.meta("alice"),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 inputs" in err.details()
    err = error_of(
        stack.deployer().Predict,
        deployer_pb2.PredictRequest(
            id=d.id,
            inputs=[deployer_pb2.Tensor(name="a", shape=[1, 4], dtype="float32", float_data=a[0])],
        ),
        stack.meta("alice"),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "b" in err.details(), err.details()
    stack.deployer().DeleteDeployment(
        deployer_pb2.DeleteDeploymentRequest(id=d.id), metadata=stack.meta("alice")
    )


def test_a_credential_limited_to_the_deployment_uses_its_name(
    stack: DeployerStack, served: Any
) -> None:
    """A key scoped to `deployments/<name>`, which the replicas check, works on every RPC on
    the deployment with the name in place of the id, and on nothing else."""
    scoped = tokens.meta(tokens.sign("alice", "user", ("deployments/dense-e2e",)))
    s = stack.deployer()
    found = s.GetDeployment(deployer_pb2.GetDeploymentRequest(id="dense-e2e"), metadata=scoped)
    assert found.id == served.id
    wait_ready(stack, served.id)

    def answered() -> bool:
        try:
            r = s.Predict(
                deployer_pb2.PredictRequest(id="dense-e2e", instances=instances(rows(2))),
                metadata=scoped,
            )
        except grpc.RpcError as exc:  # a replica being replaced by an earlier test
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
            return False
        return len(r.predictions.values) == 2

    until(answered, 60)
    for call, request in (
        (s.Predict, deployer_pb2.PredictRequest(id=served.id, instances=instances(rows(1)))),
        (s.ListDeployments, deployer_pb2.ListDeploymentsRequest()),
    ):
        assert error_of(call, request, scoped).code() == grpc.StatusCode.PERMISSION_DENIED
