"""gateway/envoy.yaml as rendered by gateway.render: Envoy itself accepts it for every target,
the targets differ in addresses only, and every RPC in the descriptor set lands on a route of
the right kind (streams unbounded, retries for reads only)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

from gateway import proxy
from gateway.render import (
    TARGETS,
    UPSTREAMS,
    RenderError,
    ensure_dynamic_dir,
    render,
    values,
)
from tests.conftest import ROOT

DESCRIPTOR_SET = ROOT / "gateway" / "neural_descriptor.pb"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
# Methods that change nothing, by name; every other RPC is a write and must never be retried.
READ = re.compile(r"(Get|List|Watch|Download|Compare|Search|Plot|Render|Validate|WhoAmI)[A-Za-z]*")


def config(target: str = "local", env: dict[str, str] | None = None) -> dict[str, Any]:
    return yaml.safe_load(render(target, env or {}))


def manager(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def routes(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    return manager(cfg)["route_config"]["virtual_hosts"][0]["routes"]


def first_route(cfg: dict[str, Any], path: str) -> dict[str, Any]:
    """The route Envoy picks for `path`: the first that matches (RE2's full match for regex)."""
    for route in routes(cfg):
        match = route["match"]
        if "path" in match and path == match["path"]:
            return route
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route
    raise AssertionError(f"no route for {path}")


def rpcs() -> list[tuple[str, str, descriptor_pb2.MethodDescriptorProto]]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    return [
        (f.package, service.name, method)
        for f in files
        if f.package.startswith("neural.")
        for service in f.service
        for method in service.method
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("target", TARGETS)
def test_envoy_accepts_the_rendered_configuration(target: str, tmp_path: Path) -> None:
    path = tmp_path / f"{target}.yaml"
    # The deployments' cluster file must exist where the configuration says.
    env = {"NEURAL_ENVOY_DYNAMIC_DIR": str(tmp_path / "dynamic")}
    ensure_dynamic_dir(tmp_path / "dynamic")
    path.write_text(render(target, env))
    result = proxy.validate(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{path}' OK" in result.stdout + result.stderr


def test_targets_differ_in_addresses_only() -> None:
    def without_addresses(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: "ADDRESS" if k in ("address", "port_value") else without_addresses(v)
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [without_addresses(v) for v in node]
        return node

    # The deployments' cluster file: a folder of the machine's, the same setting everywhere.
    dynamic = {"NEURAL_ENVOY_DYNAMIC_DIR": "/srv/envoy-dynamic"}
    rendered = [without_addresses(config(target, dynamic)) for target in TARGETS]
    assert rendered[0] == rendered[1] == rendered[2]
    compose = values("compose", {})
    assert (compose["COMPILER_HOST"], compose["COMPILER_PORT"]) == ("compiler", "50051")
    assert values("kubernetes", {})["TRACKER_HOST"] == "tracker.neural.svc.cluster.local"
    assert values("kubernetes", {}, namespace="ml")["AUTHZ_HOST"] == "authz.ml.svc.cluster.local"


def test_local_target_reads_each_address_or_port() -> None:
    env = {
        "NEURAL_COMPILER_ADDRESS": "10.1.2.3:7000",
        "NEURAL_TRACKER_PORT": "6001",
        "NEURAL_GATEWAY_PORT": "18080",
        "NEURAL_GATEWAY_ADMIN_PORT": "19901",
        "NEURAL_RATELIMIT_FAIL_OPEN": "0",
    }
    v = values("local", env)
    assert (v["COMPILER_HOST"], v["COMPILER_PORT"]) == ("10.1.2.3", "7000")
    assert (v["TRACKER_HOST"], v["TRACKER_PORT"]) == ("127.0.0.1", "6001")
    assert (v["TRAINER_HOST"], v["TRAINER_PORT"]) == ("127.0.0.1", "50052")
    assert (v["GATEWAY_HOST"], v["GATEWAY_PORT"], v["ADMIN_PORT"]) == (
        "127.0.0.1",
        "18080",
        "19901",
    )
    cfg = config("local", env)
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    assert set(clusters) == set(UPSTREAMS)
    endpoint = clusters["compiler"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "10.1.2.3",
        "port_value": 7000,
    }
    filters = {f["name"]: f["typed_config"] for f in manager(cfg)["http_filters"]}
    assert filters["envoy.filters.http.ratelimit"]["failure_mode_deny"] is True
    assert config("local")["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert config("compose")["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.parametrize(
    "env",
    [
        {"NEURAL_COMPILER_ADDRESS": "no-port"},
        {"NEURAL_TRACKER_PORT": "70000"},
        {"NEURAL_RATELIMIT_FAIL_OPEN": "maybe"},
    ],
)
def test_bad_settings_are_refused_naming_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(RenderError, match=next(iter(env))):
        render("local", env)


def test_identity_headers_are_removed_before_any_filter_and_filters_run_in_order() -> None:
    hcm = manager(config())
    mutations = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    assert {m["remove"] for m in mutations} == {
        "x-neural-principal",
        "x-neural-subject",
        "x-neural-role",
        "x-neural-deployment-cluster",  # a prediction's cluster: authz alone names it
    }
    names = [f["name"].removeprefix("envoy.filters.http.") for f in hcm["http_filters"]]
    assert names == [
        "cors",
        "grpc_web",
        "ext_authz",
        "ratelimit",
        "local_ratelimit",
        "buffer",
        "grpc_json_transcoder",
        "router",
    ]
    filters = {f["name"]: f["typed_config"] for f in hcm["http_filters"]}
    authz = filters[EXT_AUTHZ]
    assert authz["failure_mode_allow"] is False and authz["grpc_service"]["timeout"] == "0.5s"
    assert authz["clear_route_cache"] is True  # predictions are routed by what authz adds
    transcoder = filters["envoy.filters.http.grpc_json_transcoder"]
    assert transcoder["convert_grpc_status"] is True
    assert transcoder["print_options"]["preserve_proto_field_names"] is True
    assert transcoder["request_validation_options"]["reject_unknown_method"] is True
    served = {f"{package}.{service}" for package, service, _ in rpcs()}
    assert set(transcoder["services"]) == served


def test_credentials_are_asked_everywhere_but_on_public_paths() -> None:
    cfg = config()
    public = [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Check",
        "/openapi.json",
        "/docs",
        "/docs/swagger-ui-bundle.js",
        "/",  # the web console, built or not
        "/index.html",
    ]
    for path in public:
        skip = first_route(cfg, path).get("typed_per_filter_config", {}).get(EXT_AUTHZ, {})
        assert skip.get("disabled") is True, path
    private = ["/v1/programs:validate", "/v1/models/abc", "/v1/docs"]
    private += [f"/{package}.{service}/{m.name}" for package, service, m in rpcs()]
    for path in private:
        assert EXT_AUTHZ not in first_route(cfg, path).get("typed_per_filter_config", {}), path
    reflection = first_route(cfg, public[0])["route"]
    assert reflection["cluster"] == "authz"


def test_every_rpc_has_a_route_of_its_kind() -> None:
    cfg = config()
    clusters = {
        "CompilerService": "compiler",
        "TrainerService": "trainer",
        "TrackerService": "tracker",
        "DeployerService": "deployer",
        "AuthService": "authz",
    }
    for package, service, method in rpcs():
        path = f"/{package}.{service}/{method.name}"
        route = first_route(cfg, path)["route"]
        assert route["cluster"] == clusters[service], path
        streaming = method.client_streaming or method.server_streaming
        # a stream lasts as long as it needs; a unary call has a bound
        assert (route["timeout"] == "0s") == streaming, path
        if streaming:
            assert route["idle_timeout"] == "0s", path
        # only what changes nothing is ever sent twice
        rule = method.options.Extensions[annotations_pb2.http]
        read = bool(READ.fullmatch(method.name))
        assert ("retry_policy" in route) == read, path
        if rule.WhichOneof("pattern") == "get":
            assert read, f"{path} is a GET but not classed as a read"
        if read:
            assert route["retry_policy"]["retry_on"].split(",")[0] == "unavailable"


def test_the_descriptor_set_carries_error_details_for_rest_errors() -> None:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    messages = {f"{f.package}.{m.name}" for f in files for m in f.message_type}
    assert {"google.rpc.BadRequest", "google.rpc.Status", "google.rpc.ErrorInfo"} <= messages


def test_predictions_are_routed_to_the_deployment_authz_names() -> None:
    rendered = config("local", {"NEURAL_ENVOY_DYNAMIC_DIR": "/srv/dyn"})
    routes = manager(rendered)["route_config"]["virtual_hosts"][0]["routes"]
    route = next(
        r["route"] for r in routes if r["match"].get("prefix") == "/inference.GRPCInferenceService/"
    )
    assert route["cluster_header"] == "x-neural-deployment-cluster"
    assert route["cluster_not_found_response_code"] == "NOT_FOUND"
    assert "unavailable" in route["retry_policy"]["retry_on"]
    cds = rendered["dynamic_resources"]["cds_config"]["path_config_source"]
    assert cds["path"] == "/srv/dyn/cds.yaml"
    assert cds["watched_directory"]["path"] == "/srv/dyn"
