"""Predictions through the real gateway, as a user makes them: a model compiled to ONNX through
Envoy, deployed from the registry, then called with tritonclient (the Open Inference Protocol,
routed by Envoy straight to the replicas the deployer's controller registered) and over REST
(`Predict`, JSON rows): both equal in-process onnxruntime on the same inputs. A key limited to
another deployment is refused at the door; an unknown deployment is not found.

The controller's replicas are reached at this machine's outward address (NEURAL_REPLICA_HOST),
as in compose where they run in a container of their own: they listen on every interface, and
Envoy and the deployer server dial that address, not loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import yaml
from neural.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    compiler_pb2,
    compiler_pb2_grpc,
    deployer_pb2,
    deployer_pb2_grpc,
)

from tests.deployer.conftest import DENSE
from tests.deployer.test_replica_clients import run_check
from tests.gateway.harness import Platform, start_platform
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 13
SERVERS = {
    "compiler": "services.compiler",
    "deployer": "services.deployer",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}
NAME = "dense-e2e"


def outward_address() -> str:
    """This machine's address on its default route (no packet is sent); loopback where it has
    none, which still runs every test here, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3: any address off this machine
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


REPLICA_HOST = outward_address()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("gateway-predict")
    with start_platform(
        tmp,
        SERVERS,
        REDIS_DB,
        {"root": "admin"},
        env={"NEURAL_REPLICA_HOST": REPLICA_HOST},
        processes={"controller": "services.deployer.controller"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The dense model compiled to ONNX and deployed, READY, with the file it serves."""
    md = platform.metadata("root")
    with grpc.insecure_channel(platform.gateway.address) as channel:
        compiled = compiler_pb2_grpc.CompilerServiceStub(channel).Compile(
            compiler_pb2.CompileRequest(source=DENSE, backend=compiler_pb2.BACKEND_ONNX),
            metadata=md,
            timeout=300,
        )
        deployer = deployer_pb2_grpc.DeployerServiceStub(channel)
        created = deployer.CreateDeployment(
            deployer_pb2.CreateDeploymentRequest(
                deployment=deployer_pb2.Deployment(name=NAME, model_id=compiled.model.id)
            ),
            metadata=md,
            timeout=120,
        )

        def ready() -> deployer_pb2.Deployment | None:
            found = deployer.GetDeployment(
                deployer_pb2.GetDeploymentRequest(id=created.id), metadata=md, timeout=30
            )
            assert found.state != deployer_pb2.DEPLOYMENT_STATE_FAILED, found.error
            return found if found.ready_replicas >= 1 else None

        until(ready, 120, "the deployment ready", every=0.25)
        # Envoy learns of the replicas from the cluster file, then health-checks them.
        model = ort.InferenceSession(
            str(_download(channel, md, compiled.model.id, tmp_path_factory.mktemp("model")))
        )
        return created, model


def _download(channel: grpc.Channel, md: tuple, model_id: str, folder: Path) -> Path:
    path = folder / "model.onnx"
    chunks = compiler_pb2_grpc.CompilerServiceStub(channel).DownloadModel(
        compiler_pb2.DownloadModelRequest(id=model_id), metadata=md, timeout=60
    )
    path.write_bytes(b"".join(c.data for c in chunks))
    return path


def _key(platform: Platform, **limits: object) -> str:
    with grpc.insecure_channel(platform.gateway.address) as channel:
        return (
            auth_pb2_grpc.AuthServiceStub(channel)
            .CreateApiKey(
                auth_pb2.CreateApiKeyRequest(
                    name=f"k-{time.monotonic_ns()}",
                    role=auth_pb2.ROLE_ADMIN,
                    **limits,  # type: ignore[arg-type]
                ),
                metadata=platform.metadata("root"),
            )
            .key
        )


def test_tritonclient_through_the_gateway_equals_in_process_onnxruntime(
    platform: Platform, deployment: tuple, tmp_path: Path
) -> None:
    _, model = deployment
    x = np.random.default_rng(7).standard_normal((5, 8)).astype(np.float32)
    names = [o.name for o in model.get_outputs()]
    expected = dict(zip(names, model.run(None, {"input": x}), strict=True))
    headers = {"neural-deployment": NAME, "authorization": f"Bearer {platform.keys['root']}"}

    def served() -> dict | None:
        # Until Envoy has the cluster and a healthy endpoint, the gateway answers UNAVAILABLE.
        try:
            return run_check(
                platform.gateway.address, NAME, {"input": x}, expected, tmp_path, headers=headers
            )
        except AssertionError:
            return None

    answer = until(served, 60, "a prediction through the gateway", every=0.25)
    assert answer["metadata"]["name"] == NAME


def test_rest_predict_rows_equal_in_process_onnxruntime(
    platform: Platform, deployment: tuple
) -> None:
    created, model = deployment
    rows = np.random.default_rng(8).standard_normal((3, 8)).astype(np.float32)
    (expected,) = model.run(None, {"input": rows})
    answer = httpx.post(
        f"{platform.gateway.url}/v1/deployments/{created.id}:predict",
        json={"instances": rows.tolist()},
        headers={"authorization": f"Bearer {platform.keys['root']}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert np.allclose(np.array(body["predictions"], dtype=np.float32), expected, atol=1e-6)
    assert body["model_version"]


def test_a_key_for_another_deployment_and_an_unknown_deployment_are_refused(
    platform: Platform, deployment: tuple
) -> None:
    limited = _key(platform, resources=["deployments/another"])
    with grpc.insecure_channel(platform.gateway.address) as channel:
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=lambda _: b"",
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as info:
            live(
                b"",
                metadata=(("neural-deployment", NAME), ("authorization", f"Bearer {limited}")),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        root = platform.keys["root"]
        with pytest.raises(grpc.RpcError) as info:
            live(
                b"",
                metadata=(("neural-deployment", "no-such"), ("authorization", f"Bearer {root}")),
                timeout=30,
            )
        # no cluster for it: Envoy's 404, which gRPC reads as UNIMPLEMENTED
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_envoy_reaches_the_replicas_at_the_replica_host(
    platform: Platform, deployment: tuple
) -> None:
    clusters = Path(platform.env["NEURAL_ENVOY_DYNAMIC_DIR"]) / "cds.yaml"
    (found,) = [
        c
        for c in yaml.safe_load(clusters.read_text())["resources"]
        if c["name"] == f"deployment.{NAME}"
    ]
    addresses = {
        e["endpoint"]["address"]["socket_address"]["address"]
        for locality in found["load_assignment"]["endpoints"]
        for e in locality["lb_endpoints"]
    }
    assert addresses == {REPLICA_HOST}
