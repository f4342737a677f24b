"""The OpenAPI 3 document of the REST API, generated from the protos' descriptor set.

Envoy's grpc_json_transcoder serves REST from the `google.api.http` rules in the same descriptor
set, so the document is derived from exactly what the gateway transcodes: every RPC with an HTTP
rule becomes an operation, and its schemas follow the proto3 JSON mapping with the proto field
names preserved (the transcoder's `preserve_proto_field_names`). Descriptions come from the
protos' comments (the set is built with `--include_source_info`).

`python -m gateway.openapi [--descriptor-set FILE] [-o FILE]` writes it; `make setup` does so
into gateway/openapi.json, which Envoy serves at /openapi.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

GATEWAY_DIR = Path(__file__).resolve().parent
DEFAULT_DESCRIPTOR_SET = GATEWAY_DIR / "neural_descriptor.pb"
DEFAULT_OUTPUT = GATEWAY_DIR / "openapi.json"

OPENAPI_VERSION = "3.0.3"
# Only the platform's own services are public API; the imported google.* files are not.
API_PACKAGE = "neural."
HTTP_RULE_EXTENSION = "google.api.http"
REQUIRED_ROLE_EXTENSION = "neural.v1.required_role"
HTTP_BODY = "google.api.HttpBody"
STATUS_SCHEMA = "google.rpc.Status"
# What Envoy's transcoder labels a server stream (newline-delimited JSON: one message per line,
# `stream_newline_delimited`): it sets application/json on every stream that is not
# google.api.HttpBody (text/event-stream only with SSE framing) and has no setting for another
# type, so the document says application/json, the type clients really get, not
# application/x-ndjson.
STREAM_CONTENT_TYPE = "application/json"
HTTP_METHODS = ("get", "put", "post", "delete", "patch")
SECURITY = [{"bearerAuth": []}, {"apiKeyHeader": []}]

# proto3 JSON for scalars. 64-bit integers are strings so that JavaScript clients keep every
# digit; the pattern lets schema-driven clients (and fuzzers) produce only values the
# transcoder parses.
_INT64_PATTERN = r"^-?[0-9]+$"
_UINT64_PATTERN = r"^[0-9]+$"
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {
        "type": "integer",
        "format": "int64",
        "minimum": 0,
        "maximum": 4294967295,
    },
    FieldDescriptor.TYPE_FIXED32: {
        "type": "integer",
        "format": "int64",
        "minimum": 0,
        "maximum": 4294967295,
    },
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": _INT64_PATTERN},
    FieldDescriptor.TYPE_SFIXED64: {
        "type": "string",
        "format": "int64",
        "pattern": _INT64_PATTERN,
    },
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": _UINT64_PATTERN},
    FieldDescriptor.TYPE_FIXED64: {
        "type": "string",
        "format": "uint64",
        "pattern": _UINT64_PATTERN,
    },
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}

# Well-known types have a JSON form of their own rather than an object of their fields.
_ANY_OBJECT = {"type": "object", "additionalProperties": True}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "description": "RFC 3339 date-time in UTC, e.g. 2024-01-31T12:00:00Z.",
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "description": "Seconds with an `s` suffix, e.g. 1.5s.",
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamelCase, e.g. name,endTime.",
    },
    "google.protobuf.Struct": {**_ANY_OBJECT, "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}, "description": "Any JSON array."},
    "google.protobuf.NullValue": {"nullable": True, "enum": [None]},
    "google.protobuf.Empty": {"type": "object", "properties": {}, "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
        "description": "A message of the type that `@type` names, with its fields beside it.",
    },
    "google.protobuf.DoubleValue": {"type": "number", "format": "double", "nullable": True},
    "google.protobuf.FloatValue": {"type": "number", "format": "float", "nullable": True},
    "google.protobuf.Int64Value": {**_SCALARS[FieldDescriptor.TYPE_INT64], "nullable": True},
    "google.protobuf.UInt64Value": {**_SCALARS[FieldDescriptor.TYPE_UINT64], "nullable": True},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32", "nullable": True},
    "google.protobuf.UInt32Value": {**_SCALARS[FieldDescriptor.TYPE_UINT32], "nullable": True},
    "google.protobuf.BoolValue": {"type": "boolean", "nullable": True},
    "google.protobuf.StringValue": {"type": "string", "nullable": True},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte", "nullable": True},
}
# Well-known types the transcoder accepts as a query parameter (their JSON form is a string or
# a scalar); Struct, Value, Any and maps have no query-string form.
_QUERY_WELL_KNOWN = {
    name
    for name, schema in _WELL_KNOWN.items()
    if schema.get("type") in {"string", "number", "integer", "boolean"}
}

# The HTTP status Envoy's `convert_grpc_status` gives each gRPC code a caller can cause.
_ERROR_RESPONSES = {
    "400": "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is wrong; "
    "`details` holds a google.rpc.BadRequest naming the fields.",
    "401": "UNAUTHENTICATED: no credentials, or a bad, revoked or expired key or token.",
    "403": "PERMISSION_DENIED: the caller's role or key scope does not allow this call.",
    "404": "NOT_FOUND: no such resource.",
    "409": "ALREADY_EXISTS or ABORTED.",
    "413": "The request body is over the gateway's limit (RESOURCE_EXHAUSTED).",
    "429": "Over the rate limit (RESOURCE_EXHAUSTED; the gateway's limiter adds the "
    "`x-ratelimit-*` and `retry-after` headers), or RESOURCE_EXHAUSTED from a service.",
    "503": "UNAVAILABLE: the service cannot be reached; retrying later may succeed.",
}

# What the gateway's rate limiter sends with a 429 (draft-03 headers, as Envoy names them).
_RATE_LIMIT_HEADERS = {
    "retry-after": {
        "description": "Seconds until a call may succeed again.",
        "schema": {"type": "integer"},
    },
    "x-ratelimit-limit": {
        "description": "The limit and its window, e.g. `1200, 1200;w=60`.",
        "schema": {"type": "string"},
    },
    "x-ratelimit-remaining": {"schema": {"type": "integer"}},
    "x-ratelimit-reset": {
        "description": "Seconds until the window resets.",
        "schema": {"type": "integer"},
    },
}

_TEMPLATE_VARIABLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:=([^}]*))?\}")

# SourceCodeInfo paths: field numbers in descriptor.proto of FileDescriptorProto.message_type
# (4), .enum_type (5), .service (6); DescriptorProto.field (2), .nested_type (3), .enum_type
# (4); EnumDescriptorProto.value (2); ServiceDescriptorProto.method (2).
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP rule of a method: verb, path template, body and response_body selectors."""

    method: str
    template: str
    body: str
    response_body: str


@dataclass(frozen=True)
class PathVariable:
    """A variable of a path template: the field path it binds and whether it spans segments."""

    field_path: str
    multi_segment: bool

    @property
    def parameter(self) -> str:
        """The OpenAPI parameter's name: the selector with `_` for `.`, since tools expand
        path templates with format strings that read `{run.id}` as an attribute."""
        return self.field_path.replace(".", "_")


def load_pool(descriptor_set: Path) -> tuple[descriptor_pool.DescriptorPool, dict[str, str]]:
    """A pool of the set's files (no dependence on generated stubs) and its comments by name."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.Add(file_proto)
    comments: dict[str, str] = {}
    for file_proto in files.file:
        comments.update(_file_comments(file_proto))
    return pool, comments


def _file_comments(file_proto: descriptor_pb2.FileDescriptorProto) -> dict[str, str]:
    """Leading comments of every message, field, enum, value, service and method, by full name."""
    by_path = {
        tuple(location.path): location.leading_comments.strip()
        for location in file_proto.source_code_info.location
        if location.leading_comments.strip()
    }
    names: dict[tuple[int, ...], str] = {}
    prefix = f"{file_proto.package}." if file_proto.package else ""

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], name: str):
        names[path] = name
        for index, value in enumerate(enum.value):
            names[(*path, _ENUM_VALUE, index)] = f"{name}.{value.name}"

    def walk_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], name: str):
        names[path] = name
        for index, field in enumerate(message.field):
            names[(*path, _MESSAGE_FIELD, index)] = f"{name}.{field.name}"
        for index, nested in enumerate(message.nested_type):
            walk_message(nested, (*path, _MESSAGE_NESTED, index), f"{name}.{nested.name}")
        for index, enum in enumerate(message.enum_type):
            walk_enum(enum, (*path, _MESSAGE_ENUM, index), f"{name}.{enum.name}")

    for index, message in enumerate(file_proto.message_type):
        walk_message(message, (_FILE_MESSAGE, index), prefix + message.name)
    for index, enum in enumerate(file_proto.enum_type):
        walk_enum(enum, (_FILE_ENUM, index), prefix + enum.name)
    for index, service in enumerate(file_proto.service):
        service_name = prefix + service.name
        names[(_FILE_SERVICE, index)] = service_name
        for method_index, method in enumerate(service.method):
            names[(_FILE_SERVICE, index, _SERVICE_METHOD, method_index)] = (
                f"{service_name}.{method.name}"
            )
    return {names[path]: text for path, text in by_path.items() if path in names}


def _method_options(pool: descriptor_pool.DescriptorPool, method: MethodDescriptor) -> Any:
    """The method's options parsed with the pool's own extensions (google.api.http, ours)."""
    options_class = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("google.protobuf.MethodOptions")
    )
    return options_class.FromString(method.GetOptions().SerializeToString())


def _find_extension(pool: descriptor_pool.DescriptorPool, name: str) -> FieldDescriptor | None:
    try:
        return pool.FindExtensionByName(name)
    except KeyError:
        return None


def http_bindings(
    pool: descriptor_pool.DescriptorPool, method: MethodDescriptor
) -> list[HttpBinding]:
    """The method's HTTP rule and its additional_bindings, in declaration order."""
    extension = _find_extension(pool, HTTP_RULE_EXTENSION)
    if extension is None:
        return []
    options = _method_options(pool, method)
    if not options.HasExtension(extension):
        return []
    rule = options.Extensions[extension]
    return [_binding(item) for item in [rule, *rule.additional_bindings]]


def _binding(rule: Any) -> HttpBinding:
    pattern = rule.WhichOneof("pattern")
    if pattern == "custom":
        return HttpBinding(
            rule.custom.kind.lower(), rule.custom.path, rule.body, rule.response_body
        )
    return HttpBinding(pattern, getattr(rule, pattern), rule.body, rule.response_body)


def required_role(pool: descriptor_pool.DescriptorPool, method: MethodDescriptor) -> str | None:
    """The `(neural.v1.required_role)` method option; None when the RPC is public or the protos
    predate the option (then every operation is documented as needing credentials)."""
    extension = _find_extension(pool, REQUIRED_ROLE_EXTENSION)
    if extension is None:
        return None
    options = _method_options(pool, method)
    if not options.HasExtension(extension):
        return ""
    return str(options.Extensions[extension])


def parse_template(template: str) -> tuple[str, list[PathVariable]]:
    """An OpenAPI path and its variables from a google.api.http path template.

    `{name}` binds one segment and `{name=**}` (or any `=pattern`) one or more; OpenAPI has one
    syntax for both, so the variable's description says when it may contain slashes.
    """
    variables: list[PathVariable] = []

    def replace(match: re.Match[str]) -> str:
        pattern = match.group(2)
        multi = pattern is not None and pattern != "*"
        variable = PathVariable(match.group(1), multi)
        variables.append(variable)
        return "{" + variable.parameter + "}"

    return _TEMPLATE_VARIABLE.sub(replace, template), variables


class SchemaBuilder:
    """Component schemas of messages and enums in the proto3 JSON form, built on demand."""

    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, full_name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{full_name}"}

    def message(self, descriptor: Descriptor, exclude: frozenset[str] = frozenset()) -> dict:
        """A reference to the message's schema, or an inline one without the `exclude` fields
        (fields a path template binds, which a `body: "*"` request does not repeat)."""
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        if exclude:
            return self._message_schema(descriptor, exclude)
        if descriptor.full_name not in self.schemas:
            # Registered before the fields are built, so recursive messages end in a $ref.
            self.schemas[descriptor.full_name] = {}
            self.schemas[descriptor.full_name] = self._message_schema(descriptor, exclude)
        return self.ref(descriptor.full_name)

    def _message_schema(self, descriptor: Descriptor, exclude: frozenset[str]) -> dict[str, Any]:
        properties = {
            field.name: self.field(field)
            for field in descriptor.fields
            if field.name not in exclude
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        description = self.comments.get(descriptor.full_name, "")
        oneofs = [
            oneof
            for oneof in descriptor.oneofs
            if not (
                len(oneof.fields) == 1 and oneof.fields[0].has_presence and oneof.name[0] == "_"
            )
        ]
        notes = [
            f"At most one of {', '.join(f'`{f.name}`' for f in oneof.fields)} may be set "
            f"(oneof `{oneof.name}`)."
            for oneof in oneofs
        ]
        if notes:
            description = "\n\n".join(part for part in [description, *notes] if part)
            schema["x-oneof"] = {oneof.name: [f.name for f in oneof.fields] for oneof in oneofs}
        if description:
            schema["description"] = description
        return schema

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        if descriptor.full_name == "google.protobuf.NullValue":
            return dict(_WELL_KNOWN[descriptor.full_name])
        if descriptor.full_name not in self.schemas:
            schema: dict[str, Any] = {
                "type": "string",
                "enum": [value.name for value in descriptor.values],
            }
            # Values are keyed under their enum (see _file_comments), not in the enum's scope.
            value_comments = {
                value.name: self.comments.get(f"{descriptor.full_name}.{value.name}")
                for value in descriptor.values
            }
            lines = [self.comments.get(descriptor.full_name, "")] + [
                f"- `{name}`: {text}" for name, text in value_comments.items() if text
            ]
            description = "\n".join(line for line in lines if line)
            if description:
                schema["description"] = description
            self.schemas[descriptor.full_name] = schema
        return self.ref(descriptor.full_name)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of the field (an element, for repeated fields)."""
        if field.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            return self.message(field.message_type)
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if _is_map(field):
            key, value = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value)}
            if key.type != FieldDescriptor.TYPE_STRING:
                schema["x-map-key-type"] = _SCALARS[key.type].get(
                    "format", _SCALARS[key.type]["type"]
                )
        elif _is_repeated(field):
            schema = {"type": "array", "items": self.single(field)}
        else:
            schema = self.single(field)
        description = self.comments.get(field.full_name)
        if description:
            if "$ref" in schema:
                # OpenAPI 3.0 ignores siblings of $ref; allOf keeps the field's own description.
                schema = {"allOf": [schema]}
            schema["description"] = description
        return schema


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _is_map(field: FieldDescriptor) -> bool:
    return (
        _is_repeated(field)
        and field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type.GetOptions().map_entry
    )


def _resolve_field(message: Descriptor, field_path: str) -> FieldDescriptor:
    """The field a dotted selector (`experiment.id`) names, starting from `message`."""
    field: FieldDescriptor | None = None
    for part in field_path.split("."):
        if field is not None:
            message = field.message_type
        field = message.fields_by_name.get(part)
        if field is None:
            raise ValueError(f"{message.full_name} has no field {part!r} (from {field_path!r})")
    assert field is not None
    return field


def _query_parameters(
    builder: SchemaBuilder, message: Descriptor, bound: set[str], prefix: str, depth: int
) -> Iterator[dict[str, Any]]:
    """Fields a request sets through the query string: every field not bound by the path or
    the body, nested messages as `parent.child`, repeated scalars as repeated parameters."""
    for field in message.fields:
        name = prefix + field.name
        if name in bound or _is_map(field):
            continue
        is_message = field.type == FieldDescriptor.TYPE_MESSAGE
        if is_message and field.message_type.full_name not in _QUERY_WELL_KNOWN:
            if _is_repeated(field) or field.message_type.full_name in _WELL_KNOWN or depth >= 3:
                continue
            yield from _query_parameters(builder, field.message_type, bound, name + ".", depth + 1)
            continue
        schema = builder.single(field)
        if _is_repeated(field):
            schema = {"type": "array", "items": schema}
        parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
        if _is_repeated(field):
            parameter.update(style="form", explode=True)
        description = builder.comments.get(field.full_name)
        if description:
            parameter["description"] = description
        yield parameter


def _status_schemas(builder: SchemaBuilder) -> None:
    """google.rpc.Status as Envoy's `convert_grpc_status` writes it: details are Any messages
    printed with their `@type` (BadRequest, ErrorInfo, RetryInfo, ...)."""
    builder.schemas[STATUS_SCHEMA] = {
        "type": "object",
        "description": "The gRPC status of a failed call, with its details.",
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The google.rpc.Code, e.g. 3 for INVALID_ARGUMENT.",
            },
            "message": {"type": "string"},
            "details": {"type": "array", "items": dict(_WELL_KNOWN["google.protobuf.Any"])},
        },
    }


def _error_response(builder: SchemaBuilder, description: str) -> dict[str, Any]:
    """Every error is a google.rpc.Status in JSON: a service's (through `convert_grpc_status`),
    the authz service's denials, and what the gateway answers itself (a body the transcoder
    cannot parse, an unknown path, an upstream it cannot reach, an oversized request, a rate
    limit), which gateway/envoy.yaml's `local_reply_config` writes as one."""
    return {
        "description": description,
        "content": {"application/json": {"schema": builder.ref(STATUS_SCHEMA)}},
    }


def _responses(
    builder: SchemaBuilder, method: MethodDescriptor, binding: HttpBinding, secured: bool
) -> dict[str, Any]:
    output = method.output_type
    streaming = method.server_streaming
    if output.full_name == HTTP_BODY:
        # The transcoder sends the HttpBody's bytes as the body and its content_type as the
        # Content-Type, concatenating the messages of a stream: a plain file download.
        ok: dict[str, Any] = {
            "description": "The file: the body is the bytes, the Content-Type the server's.",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        }
    else:
        if binding.response_body:
            schema = builder.field(_resolve_field(output, binding.response_body))
        else:
            schema = builder.message(output)
        if streaming:
            ok = {
                "description": f"A stream of {output.name} messages as newline-delimited JSON: "
                "one JSON object per line, each written as it happens (labelled "
                "application/json, as the gateway sends it).",
                "content": {STREAM_CONTENT_TYPE: {"schema": schema}},
            }
        else:
            ok = {
                "description": f"A {output.name}.",
                "content": {"application/json": {"schema": schema}},
            }
    error = {"$ref": "#/components/responses/Error"}
    responses: dict[str, Any] = {"200": ok}
    for status in _ERROR_RESPONSES:
        if status in {"401", "403"} and not secured:
            continue
        responses[status] = {"$ref": f"#/components/responses/Error{status}"}
    responses["default"] = error
    return responses


def _request_body(
    builder: SchemaBuilder, method: MethodDescriptor, binding: HttpBinding, path_fields: set[str]
) -> dict[str, Any] | None:
    if not binding.body:
        return None
    request = method.input_type
    if binding.body == "*":
        if request.full_name == HTTP_BODY:
            return _raw_body("The request's bytes, as the Content-Type says.")
        top_level = frozenset(path for path in path_fields if "." not in path)
        schema = builder.message(request, exclude=top_level)
    else:
        body_field = _resolve_field(request, binding.body)
        if body_field.type == FieldDescriptor.TYPE_MESSAGE and (
            body_field.message_type.full_name == HTTP_BODY
        ):
            return _raw_body(builder.comments.get(body_field.full_name, "The request's bytes."))
        schema = builder.field(body_field)
    if method.client_streaming:
        # A client stream over REST is one JSON array: the transcoder sends each element as
        # one message of the stream.
        return {
            "description": f"The stream's {request.name} messages, as one JSON array.",
            "content": {"application/json": {"schema": {"type": "array", "items": schema}}},
        }
    return {"content": {"application/json": {"schema": schema}}}


def _raw_body(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
    }


def _operation(
    pool: descriptor_pool.DescriptorPool,
    builder: SchemaBuilder,
    service: ServiceDescriptor,
    method: MethodDescriptor,
    binding: HttpBinding,
    operation_id: str,
) -> tuple[str, dict[str, Any]]:
    path, variables = parse_template(binding.template)
    request = method.input_type
    parameters: list[dict[str, Any]] = []
    for variable in variables:
        field = _resolve_field(request, variable.field_path)
        description = builder.comments.get(field.full_name, "")
        notes = [description]
        if variable.parameter != variable.field_path:
            notes.append(f"The request's `{variable.field_path}`.")
        if variable.multi_segment:
            notes.append("It may contain slashes (one or more segments).")
        description = " ".join(part for part in notes if part)
        parameter: dict[str, Any] = {
            "name": variable.parameter,
            "in": "path",
            "required": True,
            "schema": builder.single(field),
        }
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    path_fields = {variable.field_path for variable in variables}
    if binding.body != "*":
        bound = path_fields | ({binding.body} if binding.body else set())
        parameters.extend(_query_parameters(builder, request, bound, "", 0))
    names = [parameter["name"] for parameter in parameters]
    if len(set(names)) != len(names):
        raise ValueError(f"{method.full_name}: parameter names collide in {names}")

    role = required_role(pool, method)
    secured = role != ""
    description = builder.comments.get(method.full_name, "")
    notes = []
    if role:
        notes.append(f"Requires the `{role}` role.")
    elif role == "":
        notes.append("Public: no credentials needed.")
    if method.client_streaming:
        notes.append("A client-streaming RPC: the body is a JSON array of its messages.")
    if method.server_streaming and method.output_type.full_name != HTTP_BODY:
        notes.append("A server-streaming RPC: the response is newline-delimited JSON.")
    notes.append(f"gRPC: `{method.full_name}`.")
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "tags": [service.name],
        "summary": method.name,
        "description": "\n\n".join(part for part in [description, *notes] if part),
    }
    if parameters:
        operation["parameters"] = parameters
    body = _request_body(builder, method, binding, path_fields)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = _responses(builder, method, binding, secured)
    if not secured:
        operation["security"] = []
    elif role:
        operation["x-required-role"] = role
    return path, operation


def build_document(descriptor_set: Path = DEFAULT_DESCRIPTOR_SET) -> dict[str, Any]:
    """The OpenAPI document of every RPC with an HTTP rule in the descriptor set."""
    pool, comments = load_pool(descriptor_set)
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    builder = SchemaBuilder(comments)
    _status_schemas(builder)
    paths: dict[str, dict[str, Any]] = {}
    tags: list[dict[str, str]] = []
    for file_proto in files.file:
        if not file_proto.package.startswith(API_PACKAGE):
            continue
        for service_proto in file_proto.service:
            service = pool.FindServiceByName(f"{file_proto.package}.{service_proto.name}")
            tag = {"name": service.name}
            if service.full_name in comments:
                tag["description"] = comments[service.full_name]
            operations = 0
            for method in service.methods:
                bindings = http_bindings(pool, method)
                for index, binding in enumerate(bindings):
                    if binding.method not in HTTP_METHODS:
                        raise ValueError(f"{method.full_name}: unsupported verb {binding.method!r}")
                    operation_id = f"{service.name}_{method.name}" + (
                        f"_{index + 1}" if index else ""
                    )
                    path, operation = _operation(
                        pool, builder, service, method, binding, operation_id
                    )
                    item = paths.setdefault(path, {})
                    if binding.method in item:
                        other = item[binding.method]["operationId"]
                        raise ValueError(
                            f"{binding.method.upper()} {path}: {other} and {operation_id}"
                        )
                    item[binding.method] = operation
                    operations += 1
            if operations:
                tags.append(tag)
    error_responses = {
        f"Error{status}": _error_response(builder, description)
        for status, description in _ERROR_RESPONSES.items()
    }
    error_responses["Error"] = _error_response(builder, "Any other failure.")
    error_responses["Error429"]["headers"] = _RATE_LIMIT_HEADERS
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Neural platform API",
            "version": "v1",
            "description": (
                "REST over the platform's gRPC services, transcoded by the Envoy gateway from "
                "the same protos (generated from their google.api.http rules; field names are "
                "the protos' own). Authenticate with `Authorization: Bearer <API key or JWT>` "
                "or `x-api-key: <API key>`. The same operations are served over gRPC and "
                "gRPC-Web at the same address."
            ),
        },
        "servers": [{"url": "/", "description": "This gateway"}],
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "responses": error_responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key or a JWT issued by the authz service.",
                },
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": SECURITY,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--descriptor-set", type=Path, default=DEFAULT_DESCRIPTOR_SET)
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    document = build_document(args.descriptor_set)
    args.output.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    operations = sum(len(item) for item in document["paths"].values())
    print(f"{args.output}: {operations} operations", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
