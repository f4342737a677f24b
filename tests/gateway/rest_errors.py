"""What an error through the gateway must look like: to a REST client a google.rpc.Status in
JSON (the OpenAPI document's Status schema), whoever answered it (a service through the
transcoder, the authz service, or Envoy itself); to a gRPC client a status with a plain
message, never that JSON."""

from __future__ import annotations

from typing import Any

import grpc
import httpx


def status_body(response: httpx.Response, code: grpc.StatusCode) -> dict[str, Any]:
    """`response`'s body, checked to be a google.rpc.Status in JSON with `code`."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert set(body) <= {"code", "message", "details"}, body
    assert body["code"] == code.value[0], body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def gateway_grpc_reply(error: grpc.RpcError, code: grpc.StatusCode) -> str:
    """`error`'s message, checked to be an answer Envoy gave itself to a gRPC call: `code`
    in a trailers-only response (Envoy's own headers arrive with the status), its message
    plain text, not the JSON a REST client gets. Returns the message."""
    assert error.code() == code, error
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert trailers.get("server") == "envoy", trailers
    details = error.details() or ""  # type: ignore[attr-defined]
    assert not details.lstrip().startswith("{"), details
    return details
