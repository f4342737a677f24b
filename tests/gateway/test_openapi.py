"""The OpenAPI document generated from the protos' HTTP rules (gateway/openapi.py)."""

from __future__ import annotations

import re
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from gateway.openapi import build_document, parse_template

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"

# A service exercising every case the generator handles, so these tests do not depend on which
# shapes the platform's own protos happen to use today.
THING_PROTO = """
syntax = "proto3";

// Things, for the generator's tests.
package neural.testing;

import "google/api/annotations.proto";
import "google/api/httpbody.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/empty.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "neural/v1/options.proto";

// Keeps things.
service ThingService {
  // Gets one thing.
  rpc GetThing(GetThingRequest) returns (Thing) {
    option (neural.v1.required_role) = "viewer";
    option (google.api.http) = {
      get: "/v1/things/{id}"
      additional_bindings { get: "/v1/shelves/{shelf}/things/{id}" }
    };
  }
  rpc ListThings(ListThingsRequest) returns (ListThingsResponse) {
    option (neural.v1.required_role) = "viewer";
    option (google.api.http) = { get: "/v1/things" };
  }
  rpc UpdateThing(UpdateThingRequest) returns (Thing) {
    option (neural.v1.required_role) = "user";
    option (google.api.http) = { patch: "/v1/things/{thing.id}" body: "thing" };
  }
  rpc Touch(TouchRequest) returns (Thing) {
    option (neural.v1.required_role) = "user";
    option (google.api.http) = { post: "/v1/things/{id}:touch" body: "*" };
  }
  // The file at a path under the thing.
  rpc ReadFile(ReadFileRequest) returns (stream google.api.HttpBody) {
    option (neural.v1.required_role) = "viewer";
    option (google.api.http) = { get: "/v1/things/{id}/files/{path=**}" };
  }
  rpc WatchThing(GetThingRequest) returns (stream Thing) {
    option (neural.v1.required_role) = "viewer";
    option (google.api.http) = { get: "/v1/things/{id}:watch" };
  }
  rpc PutThings(stream Thing) returns (google.protobuf.Empty) {
    option (neural.v1.required_role) = "admin";
    option (google.api.http) = { post: "/v1/things:batch" body: "*" };
  }
  rpc Hello(google.protobuf.Empty) returns (google.protobuf.Empty) {
    option (google.api.http) = { get: "/v1/hello" };
  }
  rpc GrpcOnly(GetThingRequest) returns (Thing) {
    option (neural.v1.required_role) = "viewer";
  }
}

enum Color {
  COLOR_UNSPECIFIED = 0;
  // Like a fire engine.
  COLOR_RED = 1;
}

message Thing {
  string id = 1;
  // Bytes on disk.
  int64 size = 2;
  Color color = 3;
  google.protobuf.Struct attributes = 4;
  map<string, int64> counts = 5;
  repeated string labels = 6;
  bytes blob = 7;
  google.protobuf.Timestamp create_time = 8;
  google.protobuf.Duration ttl = 9;
  oneof owner {
    string user = 10;
    string team = 11;
  }
  optional int32 rank = 12;
  Thing parent = 13;
  google.protobuf.Value extra = 14;
  uint64 checksum = 15;
}

message GetThingRequest {
  string id = 1;
  string shelf = 2;
}

message Filter {
  Color color = 1;
  int64 min_size = 2;
}

message ListThingsRequest {
  // At most 100.
  int32 page_size = 1;
  repeated string labels = 2;
  Filter filter = 3;
  google.protobuf.Struct ignored = 4;
  map<string, string> by_name = 5;
  google.protobuf.Timestamp since = 6;
}

message ListThingsResponse {
  repeated Thing things = 1;
}

message UpdateThingRequest {
  Thing thing = 1;
  google.protobuf.FieldMask update_mask = 2;
}

message TouchRequest {
  string id = 1;
  string note = 2;
}

message ReadFileRequest {
  string id = 1;
  string path = 2;
}
"""


def _include_dirs() -> list[str]:
    """protos/, and site-packages for google/api/*.proto (googleapis-common-protos) and the
    well-known types, as the Makefile's protoc run has them."""
    return [f"-I{PROTOS}", f"-I{site.getsitepackages()[0]}"]


def _descriptor_set(out: Path, sources: list[str], include: list[str]) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *include,
            *_include_dirs(),
            f"--descriptor_set_out={out}",
            "--include_imports",
            "--include_source_info",
            *sources,
        ],
        check=True,
    )
    return out


@pytest.fixture(scope="module")
def thing_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("thing")
    (work / "neural" / "testing").mkdir(parents=True)
    (work / "neural" / "testing" / "thing.proto").write_text(THING_PROTO)
    pb = _descriptor_set(work / "thing.pb", ["neural/testing/thing.proto"], [f"-I{work}"])
    return build_document(pb)


@pytest.fixture(scope="module")
def platform_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The platform's descriptor set built from the protos as they are now, as make setup
    builds it."""
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "neural" / "v1").glob("*.proto"))
    out = tmp_path_factory.mktemp("platform") / "neural_descriptor.pb"
    return _descriptor_set(out, protos, [])


def _schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]


def _params(operation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in operation.get("parameters", [])}


def test_the_test_service_document_is_valid_openapi(thing_doc: dict[str, Any]) -> None:
    validate(thing_doc)
    assert thing_doc["openapi"].startswith("3.")
    assert [tag["name"] for tag in thing_doc["tags"]] == ["ThingService"]
    assert thing_doc["tags"][0]["description"] == "Keeps things."


def test_path_templates_single_and_multi_segment() -> None:
    assert parse_template("/v1/things/{id}")[0] == "/v1/things/{id}"
    path, variables = parse_template("/v1/runs/{run_id}/artifacts/{path=**}:download")
    assert path == "/v1/runs/{run_id}/artifacts/{path}:download"
    assert [(v.field_path, v.multi_segment) for v in variables] == [
        ("run_id", False),
        ("path", True),
    ]
    path, variables = parse_template("/v1/things/{thing.id}")
    assert variables[0].field_path == "thing.id"
    # Dots read as attribute access in format-string tools: the OpenAPI name has `_`.
    assert path == "/v1/things/{thing_id}"
    assert parse_template("/v1/things/{id=*}")[1][0].multi_segment is False


def test_get_with_path_variable_and_additional_binding(thing_doc: dict[str, Any]) -> None:
    get = thing_doc["paths"]["/v1/things/{id}"]["get"]
    assert get["operationId"] == "ThingService_GetThing"
    assert get["description"].startswith("Gets one thing.")
    params = _params(get)
    assert params["id"]["in"] == "path" and params["id"]["required"] is True
    # The fields the path does not bind are query parameters.
    assert params["shelf"]["in"] == "query"
    second = thing_doc["paths"]["/v1/shelves/{shelf}/things/{id}"]["get"]
    assert second["operationId"] == "ThingService_GetThing_2"
    assert {p["in"] for p in second["parameters"]} == {"path"}
    ok = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/neural.testing.Thing"}


def test_multi_segment_variable_says_it_may_hold_slashes(thing_doc: dict[str, Any]) -> None:
    get = thing_doc["paths"]["/v1/things/{id}/files/{path}"]["get"]
    assert "slashes" in _params(get)["path"]["description"]
    assert "slashes" not in _params(get)["id"].get("description", "")


def test_query_parameters_of_a_get(thing_doc: dict[str, Any]) -> None:
    params = _params(thing_doc["paths"]["/v1/things"]["get"])
    assert params["page_size"]["schema"] == {"type": "integer", "format": "int32"}
    assert params["page_size"]["description"] == "At most 100."
    assert params["labels"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert params["labels"]["explode"] is True
    # Nested message fields are dotted names; an enum keeps its names.
    assert params["filter.color"]["schema"] == {"$ref": "#/components/schemas/neural.testing.Color"}
    assert params["filter.min_size"]["schema"]["type"] == "string"
    assert params["since"]["schema"]["format"] == "date-time"
    # Struct and maps have no query-string form in the transcoder.
    assert "ignored" not in params and "by_name" not in params
    assert all(p["in"] == "query" for p in params.values())


def test_body_field_and_nested_path_variable(thing_doc: dict[str, Any]) -> None:
    patch = thing_doc["paths"]["/v1/things/{thing_id}"]["patch"]
    params = _params(patch)
    assert params["thing_id"]["in"] == "path"
    assert "`thing.id`" in params["thing_id"]["description"]
    # The body is the `thing` field; the rest of the request goes in the query string.
    assert set(params) == {"thing_id", "update_mask"}
    assert params["update_mask"]["schema"]["type"] == "string"
    body = patch["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/neural.testing.Thing"}


def test_body_star_leaves_the_path_fields_out(thing_doc: dict[str, Any]) -> None:
    post = thing_doc["paths"]["/v1/things/{id}:touch"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"note"}
    assert set(_params(post)) == {"id"}


def test_proto3_json_mapping_of_fields(thing_doc: dict[str, Any]) -> None:
    thing = _schema(thing_doc, "neural.testing.Thing")
    props = thing["properties"]
    # Proto field names preserved (not lowerCamelCase).
    assert "create_time" in props and "createTime" not in props
    assert props["size"] == {
        "type": "string",
        "format": "int64",
        "pattern": r"^-?[0-9]+$",
        "description": "Bytes on disk.",
    }
    assert props["checksum"]["type"] == "string" and props["checksum"]["format"] == "uint64"
    assert props["color"] == {"$ref": "#/components/schemas/neural.testing.Color"}
    assert props["attributes"]["type"] == "object"
    assert props["attributes"]["additionalProperties"] is True
    assert "type" not in props["extra"]
    assert props["counts"]["type"] == "object"
    assert props["counts"]["additionalProperties"]["format"] == "int64"
    assert props["labels"] == {"type": "array", "items": {"type": "string"}}
    assert props["blob"] == {"type": "string", "format": "byte"}
    assert props["create_time"]["format"] == "date-time"
    assert re.fullmatch(props["ttl"]["pattern"], "1.5s")
    assert props["parent"] == {"$ref": "#/components/schemas/neural.testing.Thing"}
    assert props["rank"] == {"type": "integer", "format": "int32"}
    # A real oneof is described; proto3 `optional` (a synthetic oneof) is not.
    assert thing["x-oneof"] == {"owner": ["user", "team"]}
    assert "`user`, `team`" in thing["description"]


def test_enum_is_its_value_names_with_comments(thing_doc: dict[str, Any]) -> None:
    color = _schema(thing_doc, "neural.testing.Color")
    assert color["type"] == "string"
    assert color["enum"] == ["COLOR_UNSPECIFIED", "COLOR_RED"]
    assert "`COLOR_RED`: Like a fire engine." in color["description"]


def test_http_body_response_is_a_binary_file(thing_doc: dict[str, Any]) -> None:
    ok = thing_doc["paths"]["/v1/things/{id}/files/{path}"]["get"]["responses"]["200"]
    assert ok["content"] == {"*/*": {"schema": {"type": "string", "format": "binary"}}}
    assert "google.api.HttpBody" not in thing_doc["components"]["schemas"]


def test_server_stream_is_ndjson_and_client_stream_a_json_array(thing_doc: dict[str, Any]) -> None:
    watch = thing_doc["paths"]["/v1/things/{id}:watch"]["get"]
    ok = watch["responses"]["200"]
    # one message per line, under the content type Envoy's transcoder really sends
    assert list(ok["content"]) == ["application/json"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("neural.testing.Thing")
    assert "newline-delimited JSON" in watch["description"]
    batch = thing_doc["paths"]["/v1/things:batch"]["post"]
    body = batch["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"type": "array", "items": {"$ref": "#/components/schemas/neural.testing.Thing"}}
    empty = batch["responses"]["200"]["content"]["application/json"]["schema"]
    assert empty["properties"] == {}


def test_errors_and_security_follow_the_role_option(thing_doc: dict[str, Any]) -> None:
    schemes = thing_doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert thing_doc["security"] == [{"bearerAuth": []}, {"apiKeyHeader": []}]
    batch = thing_doc["paths"]["/v1/things:batch"]["post"]
    assert batch["x-required-role"] == "admin"
    assert "security" not in batch
    assert {"400", "401", "403", "404", "429", "503", "default"} <= set(batch["responses"])
    hello = thing_doc["paths"]["/v1/hello"]["get"]
    assert hello["security"] == []
    assert "401" not in hello["responses"]
    # Every error, what Envoy answers itself included (its local_reply_config), is a Status;
    # the rate limit's 429 also documents the limiter's headers.
    as_status = {"application/json": {"schema": {"$ref": "#/components/schemas/google.rpc.Status"}}}
    for response in thing_doc["components"]["responses"].values():
        assert response["content"] == as_status, response
    assert "retry-after" in thing_doc["components"]["responses"]["Error429"]["headers"]
    status = _schema(thing_doc, "google.rpc.Status")["properties"]
    assert status["details"]["items"]["properties"]["@type"] == {"type": "string"}


def test_an_rpc_without_http_rule_is_not_an_operation(thing_doc: dict[str, Any]) -> None:
    ids = {op["operationId"] for item in thing_doc["paths"].values() for op in item.values()}
    assert "ThingService_GrpcOnly" not in ids
    assert len(ids) == 9


def _platform_rules(descriptor_set: Path) -> list[tuple[str, str, str]]:
    """(verb, OpenAPI path, operationId) of every HTTP rule, read with googleapis' own
    annotations module rather than the generator's code."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    rules = []
    for file_proto in files.file:
        if not file_proto.package.startswith("neural."):
            continue
        for service in file_proto.service:
            for method in service.method:
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                rule = method.options.Extensions[annotations_pb2.http]
                for index, binding in enumerate([rule, *rule.additional_bindings]):
                    verb = binding.WhichOneof("pattern")
                    path = re.sub(
                        r"\{([^}=]+)(=[^}]*)?\}",
                        lambda m: "{" + m.group(1).replace(".", "_") + "}",
                        getattr(binding, verb),
                    )
                    suffix = f"_{index + 1}" if index else ""
                    rules.append((verb, path, f"{service.name}_{method.name}{suffix}"))
    return rules


def test_every_http_rule_of_every_proto_is_an_operation(platform_set: Path) -> None:
    doc = build_document(platform_set)
    validate(doc)
    rules = _platform_rules(platform_set)
    assert len(rules) > 40
    for verb, path, operation_id in rules:
        assert doc["paths"][path][verb]["operationId"] == operation_id
    operations = sum(len(item) for item in doc["paths"].values())
    assert operations == len(rules)
    services = {operation_id.split("_")[0] for _, _, operation_id in rules}
    assert {tag["name"] for tag in doc["tags"]} == services


def test_platform_document_has_public_issue_token_and_comments(platform_set: Path) -> None:
    doc = build_document(platform_set)
    issue = doc["paths"]["/v1/tokens"]["post"]
    assert issue["security"] == []
    compile_ = doc["paths"]["/v1/models:compile"]["post"]
    assert compile_["x-required-role"] == "user"
    assert compile_["description"]


def test_cli_writes_the_document(platform_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "openapi.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.openapi",
            "--descriptor-set",
            str(platform_set),
            "-o",
            str(out),
        ],
        check=True,
        cwd=ROOT,
    )
    assert out.read_text().startswith("{")
