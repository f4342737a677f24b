"""The authz service finds the RPC (and so the role) of a gRPC or REST request from the
protos' HTTP rules, as Envoy's transcoder will route it."""

from __future__ import annotations

import pytest

from gateway.authz.routes import Routes, template_regex

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def routes() -> Routes:
    return Routes()


@pytest.mark.parametrize(
    ("method", "path", "rpc", "role"),
    [
        ("POST", "/neural.v1.CompilerService/Compile", "CompilerService/Compile", "user"),
        ("POST", "/v1/programs:validate", "CompilerService/Validate", "viewer"),
        ("POST", "/v1/models:compile?x=1", "CompilerService/Compile", "user"),
        ("GET", "/v1/compile-jobs/j-1", "CompilerService/GetCompileJob", "viewer"),
        ("POST", "/v1/compile-jobs/j-1:cancel", "CompilerService/CancelCompileJob", "user"),
        ("GET", "/v1/runs/r1:watch", "TrackerService/WatchRun", "viewer"),
        ("GET", "/v1/runs/r1", "TrackerService/GetRun", "viewer"),
        ("GET", "/v1/runs/r1/metrics/train/loss", "TrackerService/GetMetricHistory", "viewer"),
        (
            "GET",
            "/v1/runs/r1/artifacts/a/b.onnx:download",
            "TrackerService/DownloadArtifactFile",
            "viewer",
        ),
        ("DELETE", "/v1/runs/r1/artifacts/a/b.onnx", "TrackerService/DeleteArtifact", "user"),
        ("GET", "/v1/api-keys", "AuthService/ListApiKeys", "viewer"),
        ("POST", "/v1/api-keys", "AuthService/CreateApiKey", "admin"),
        ("POST", "/v1/tokens", "AuthService/IssueToken", ""),
        ("POST", "/grpc.health.v1.Health/Check", "", ""),
    ],
)
def test_a_request_finds_its_rpc_and_role(
    routes: Routes, method: str, path: str, rpc: str, role: str
) -> None:
    route = routes.find(method, path)
    assert route is not None
    if rpc:
        assert route.rpc == f"/neural.v1.{rpc}"
    assert route.role == role


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/programs:validate"),  # the rule is POST
        ("GET", "/v1/nothing"),
        ("POST", "/neural.v1.CompilerService/NoSuchRpc"),
        ("GET", "/v1/compile-jobs/a/b"),  # one segment only
    ],
)
def test_a_request_that_names_no_rpc_finds_none(routes: Routes, method: str, path: str) -> None:
    assert routes.find(method, path) is None


def test_templates_become_anchored_patterns() -> None:
    regex = template_regex("/v1/runs/{run_id}/artifacts/{path=**}:download")
    assert regex.match("/v1/runs/r/artifacts/x/y:download")
    assert not regex.match("/v1/runs/r/artifacts/x/y:downloadChunks")
    assert not regex.match("/v1/runs/r/x/artifacts/y:download")
    assert template_regex("/v1/models/{id}").match("/v1/models/m-1")
    assert not template_regex("/v1/models/{id}").match("/v1/models:compile")
