"""Outside clients through the gateway: a real Envoy (the configuration `make run` uses) in
front of real compiler, tracker and trainer servers and the real authz and rate-limit services,
on PostgreSQL and Redis. REST (JSON in, JSON out, errors as HTTP statuses with their details),
gRPC and gRPC-Web on the one port, credentials checked at the door, reflection through it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neural.v1 import compiler_pb2, compiler_pb2_grpc, tracker_pb2, tracker_pb2_grpc

from tests.gateway.harness import Platform, start_platform
from tests.gateway.rest_errors import gateway_grpc_reply, status_body

pytestmark = pytest.mark.e2e

REDIS_DB = 11
SOURCE = "network N {\n  input: (4)\n  layers:\n    Dense(3)\n}\n"
SERVERS = {
    "compiler": "services.compiler",
    "tracker": "services.tracker",
    "trainer": "services.trainer",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("platform")
    keys = {"user": "user", "viewer": "viewer"}
    with start_platform(tmp, SERVERS, REDIS_DB, keys) as running:
        yield running


def test_rest_validate_is_json_in_and_json_out(platform: Platform) -> None:
    r = httpx.post(
        f"{platform.gateway.url}/v1/programs:validate",
        json={"source": SOURCE},
        headers=platform.headers(),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["valid"] is True
    assert "N" in body["shapes"]  # a structured map, not JSON inside a string
    # the rate limiter counted the call and says what is left
    limit = int(r.headers["x-ratelimit-limit"].split(",")[0])
    assert int(r.headers["x-ratelimit-remaining"]) < limit


def test_rest_errors_carry_the_http_status_and_details(platform: Platform) -> None:
    url = platform.gateway.url
    bad = httpx.post(
        f"{url}/v1/models:compile",
        json={"source": "network N {\n  input: (4)\n  layers:\n    Dense(\n}\n"},
        headers=platform.headers(),
        timeout=30,
    )
    assert bad.status_code == 400, bad.text
    error = bad.json()
    assert error["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = {d["@type"]: d for d in error["details"]}
    violations = details["type.googleapis.com/google.rpc.BadRequest"]["field_violations"]
    assert violations and all(v["field"] for v in violations)

    missing = httpx.get(f"{url}/v1/models/no-such-model", headers=platform.headers(), timeout=30)
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == grpc.StatusCode.NOT_FOUND.value[0]

    # a service that is not running (the deployer, not built yet) is unavailable, not an error
    down = httpx.get(f"{url}/v1/deployments", headers=platform.headers(), timeout=30)
    assert down.status_code == 503, down.text
    status_body(down, grpc.StatusCode.UNAVAILABLE)  # Envoy's own answer, as a Status too

    for headers in ({}, {"x-api-key": "nk_not-a-real-key"}):
        denied = httpx.get(f"{url}/v1/models", headers=headers, timeout=30)
        assert denied.status_code == 401, denied.text
        # the authz service's Status, as it sent it (not wrapped in another one)
        message = status_body(denied, grpc.StatusCode.UNAUTHENTICATED)["message"]
        assert "credentials" in message and "{" not in message

    unknown = httpx.get(f"{url}/v1/no-such-collection", headers=platform.headers(), timeout=30)
    assert unknown.status_code == 404, unknown.text
    message = status_body(unknown, grpc.StatusCode.NOT_FOUND)["message"]
    assert "/v1/no-such-collection" in message and "{" not in message


def test_an_unknown_grpc_method_is_unimplemented(platform: Platform) -> None:
    """The REST error bodies leave gRPC alone: an RPC no service has (refused at the door by
    the authz service, which knows every RPC) is still UNIMPLEMENTED, answered trailers-only
    by Envoy itself."""
    with grpc.insecure_channel(platform.gateway.address) as channel:
        for method in ("/neural.v1.CompilerService/NoSuchMethod", "/some.Unknown/Method"):
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                call(b"", metadata=platform.metadata(), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED, info.value
            assert dict(info.value.trailing_metadata() or ()).get("server") == "envoy"


def test_rest_compile_then_get_the_model(platform: Platform) -> None:
    url = platform.gateway.url
    r = httpx.post(
        f"{url}/v1/models:compile",
        json={"source": SOURCE, "backend": "BACKEND_PYTORCH", "name": "through-envoy"},
        headers=platform.headers(),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    model = r.json()["model"]
    got = httpx.get(f"{url}/v1/models/{model['id']}", headers=platform.headers(), timeout=30)
    assert got.status_code == 200, got.text
    assert got.json()["id"] == model["id"] and got.json()["name"] == "through-envoy"


def test_grpc_through_the_gateway_for_every_service(platform: Platform) -> None:
    with grpc.insecure_channel(platform.gateway.address) as channel:
        compiler = compiler_pb2_grpc.CompilerServiceStub(channel)
        r = compiler.Validate(
            compiler_pb2.ValidateRequest(source=SOURCE), metadata=platform.metadata(), timeout=30
        )
        assert r.valid
        tracker = tracker_pb2_grpc.TrackerServiceStub(channel)
        experiment = tracker.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name="via-gateway")
            ),
            metadata=platform.metadata(),
            timeout=30,
        )
        with pytest.raises(grpc.RpcError) as info:
            compiler.Validate(compiler_pb2.ValidateRequest(source=SOURCE), timeout=30)
        # the authz service's denial, told to a gRPC client as a plain message, not JSON
        assert "missing credentials" in gateway_grpc_reply(
            info.value, grpc.StatusCode.UNAUTHENTICATED
        )
        # a viewer may read but not write: the role each RPC needs, checked at the door
        with pytest.raises(grpc.RpcError) as info:
            tracker.CreateExperiment(
                tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="v")),
                metadata=platform.metadata("viewer"),
                timeout=30,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # what gRPC wrote, REST reads (and the trainer answers REST too)
    url = platform.gateway.url
    got = httpx.get(f"{url}/v1/experiments/{experiment.id}", headers=platform.headers(), timeout=30)
    assert got.status_code == 200 and got.json()["name"] == "via-gateway", got.text
    datasets = httpx.get(f"{url}/v1/datasets", headers=platform.headers(), timeout=30)
    assert datasets.status_code == 200, datasets.text


def test_grpc_web_from_a_browser_client(platform: Platform) -> None:
    message = compiler_pb2.ValidateRequest(source=SOURCE).SerializeToString()
    r = httpx.post(
        f"{platform.gateway.url}/neural.v1.CompilerService/Validate",
        content=b"\x00" + len(message).to_bytes(4, "big") + message,
        headers={
            "content-type": "application/grpc-web+proto",
            "x-grpc-web": "1",
            "origin": "http://console.example",
            **platform.headers(),
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == "http://console.example"
    assert r.content[0] == 0
    size = int.from_bytes(r.content[1:5], "big")
    reply = compiler_pb2.ValidateResponse.FromString(r.content[5 : 5 + size])
    assert reply.valid and "N" in reply.shapes
    assert b"grpc-status:0" in r.content[5 + size :]


def test_a_forged_internal_token_gets_nowhere(platform: Platform) -> None:
    forged = {"x-neural-principal": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "x-neural-role": "admin"}
    r = httpx.get(f"{platform.gateway.url}/v1/models", headers=forged, timeout=30)
    assert r.status_code == 401, r.text  # removed at the door: no credentials are left
    # and straight to a service, past the gateway, the forged token is refused by its signature
    direct = grpc.insecure_channel(f"127.0.0.1:{platform.ports['compiler']}")
    with direct, pytest.raises(grpc.RpcError) as info:
        compiler_pb2_grpc.CompilerServiceStub(direct).ListModels(
            compiler_pb2.ListModelsRequest(), metadata=tuple(forged.items()), timeout=30
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpcurl_lists_every_service_through_the_gateway(platform: Platform) -> None:
    grpcurl = Path(sys.executable).parent / "grpcurl"
    out = subprocess.run(
        [str(grpcurl), "-plaintext", platform.gateway.address, "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert {
        "neural.v1.CompilerService",
        "neural.v1.TrainerService",
        "neural.v1.TrackerService",
        "neural.v1.DeployerService",
        "neural.v1.AuthService",
    } <= listed, out.stdout


def test_a_watch_streams_newline_delimited_json_over_rest(platform: Platform) -> None:
    url, headers = platform.gateway.url, platform.headers()
    experiment = httpx.post(
        f"{url}/v1/experiments", json={"name": "watched"}, headers=headers, timeout=30
    ).json()
    run = httpx.post(
        f"{url}/v1/experiments/{experiment['id']}/runs",
        json={"name": "r"},
        headers=headers,
        timeout=30,
    ).json()
    assert run["status"] == "RUN_STATUS_RUNNING", run
    with httpx.stream("GET", f"{url}/v1/runs/{run['id']}:watch", headers=headers, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        first = json.loads(next(lines))  # one event per line, sent as it happens
        assert first["type"] == "status" and first["status"] == "RUN_STATUS_RUNNING"
        finished = httpx.patch(
            f"{url}/v1/runs/{run['id']}",
            params={"update_mask": "status"},
            json={"status": "RUN_STATUS_FINISHED"},
            headers=headers,
            timeout=30,
        )
        assert finished.status_code == 200, finished.text
        last = json.loads(next(line for line in lines if line.strip()))
        assert last["status"] == "RUN_STATUS_FINISHED"


def test_a_model_downloads_as_a_file_over_rest(platform: Platform) -> None:
    url, headers = platform.gateway.url, platform.headers()
    model = httpx.post(
        f"{url}/v1/models:compile",
        json={"source": SOURCE, "backend": "BACKEND_PYTORCH", "name": "download-me"},
        headers=headers,
        timeout=60,
    ).json()["model"]
    r = httpx.get(f"{url}/v1/models/{model['id']}:download", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert "attachment" in r.headers["content-disposition"]
    assert b"def build_model()" in r.content


def test_the_gateway_answers_health_without_credentials(platform: Platform) -> None:
    with grpc.insecure_channel(platform.gateway.address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
