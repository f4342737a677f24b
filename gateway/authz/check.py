"""Envoy's ext_authz `Check`: may this request through, and as whom?

The caller presents `authorization: Bearer <API key or JWT>` or `x-api-key: <API key>`. On
allow, the upstream request gets `x-neural-principal` (an internal token authz signed, what
services trust), `x-neural-subject` and `x-neural-role` (for the rate limiter), each
overwriting whatever the client sent, and loses `authorization` and `x-api-key`: the
long-lived secret goes no further than the door. On deny, Envoy answers the client 401 (no,
bad, expired or revoked credentials) or 403 (a role or scope that does not allow the RPC)
with a JSON body `{"code": ..., "message": ...}`; 404 for a path that names no RPC.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from service_kit.auth import AuthStore, Principal
from service_kit.internal_token import HEADER as PRINCIPAL_HEADER
from service_kit.internal_token import Signer, Verifier

from .audit import AuditLog
from .routes import Routes
from .store import KEY_PREFIX, Grant, KeyStore

log = logging.getLogger("neural.authz.check")

SUBJECT_HEADER = "x-neural-subject"
ROLE_HEADER = "x-neural-role"
REMOVED = ("authorization", "x-api-key")
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True)
class Denial:
    http: int
    code: str
    grpc: int
    message: str
    # For the audit log: who was refused, when the credentials named someone, and the key.
    subject: str = ""
    key_id: str = ""


def _unauthenticated(message: str) -> Denial:
    return Denial(401, "UNAUTHENTICATED", code_pb2.UNAUTHENTICATED, message)


def _forbidden(message: str, who: Principal) -> Denial:
    return Denial(
        403, "PERMISSION_DENIED", code_pb2.PERMISSION_DENIED, message, who.subject, who.key_id
    )


def credential_of(headers: Mapping[str, str]) -> str:
    header = headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return headers.get("x-api-key", "").strip()


def _headers(request: external_auth_pb2.CheckRequest) -> dict[str, str]:
    http = request.attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    # Envoy sends header_map instead when configured to pass raw header bytes.
    for h in http.header_map.headers:
        headers[h.key.lower()] = h.value or h.raw_value.decode("utf-8", "replace")
    return headers


class Authorizer:
    """The decision itself: credentials -> principal -> role and scope of the RPC."""

    def __init__(
        self,
        keys: KeyStore,
        tokens: Verifier | None,
        signer: Signer,
        audit: AuditLog,
        legacy: AuthStore | None = None,
    ) -> None:
        self.keys = keys
        # The kit's key table, which the services still read directly: keys made offline
        # with `neural-keys create` (the first admin's) work through the gateway too.
        self.legacy = legacy
        self.tokens = tokens  # checks the API tokens IssueToken hands out
        self.signer = signer  # signs the internal tokens passed upstream
        self.audit = audit
        self.routes = Routes()

    async def grant_of(self, credential: str) -> Grant | None:
        """What an API key or an API token (JWT) allows; None when it is not valid now."""
        if credential.startswith(KEY_PREFIX):
            grant = await self.keys.authenticate(credential)
            if grant is None and self.legacy is not None:
                principal = await self.legacy.verify(credential)
                grant = Grant(principal) if principal is not None else None
            return grant
        if self.tokens is None:
            return None
        principal = self.tokens.verify(credential)
        if principal is None:
            return None
        # A token dies with the key it was issued from: revocation reaches tokens too.
        if principal.key_id and not await self.keys.key_usable(principal.key_id):
            return None
        return Grant(principal)

    async def decide(
        self, method: str, path: str, headers: Mapping[str, str]
    ) -> Principal | Denial | None:
        """The principal to pass upstream, a denial, or None for a public RPC."""
        route = self.routes.find(method, path)
        if route is None:
            return Denial(404, "NOT_FOUND", code_pb2.NOT_FOUND, f"no RPC at {method} {path[:200]}")
        if not route.role:
            return None
        credential = credential_of(headers)
        if not credential:
            return _unauthenticated(
                "missing credentials: send 'authorization: Bearer <api key or token>'"
            )
        grant = await self.grant_of(credential)
        if grant is None:
            return _unauthenticated("invalid, expired or revoked credentials")
        rpc = route.rpc.rsplit("/", 1)[-1]
        who = grant.principal
        if not who.allows(route.role):
            return _forbidden(f"{rpc} needs the {route.role} role", who)
        if not grant.permits(route.rpc):
            return _forbidden(f"this key's scopes do not include {rpc}", who)
        return who

    async def check(
        self, request: external_auth_pb2.CheckRequest
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = _headers(request)
        outcome = await self.decide(http.method, http.path, headers)
        action = f"{http.method} {http.path.split('?', 1)[0]}"
        if isinstance(outcome, Denial):
            self.audit.record(
                outcome.subject, action, False, outcome.message, target=outcome.key_id
            )
            grpc = headers.get("content-type", "").startswith("application/grpc")
            return _denied(outcome, grpc)
        if outcome is None:
            return _allowed(None, "")
        self.audit.record(outcome.subject, action, True, target=outcome.key_id)
        return _allowed(outcome, self.signer.sign(outcome))


def _allowed(principal: Principal | None, token: str) -> external_auth_pb2.CheckResponse:
    ok = external_auth_pb2.OkHttpResponse(headers_to_remove=list(REMOVED))
    if principal is not None:
        for key, value in (
            (PRINCIPAL_HEADER, token),
            (SUBJECT_HEADER, principal.subject),
            (ROLE_HEADER, principal.role),
        ):
            ok.headers.add(
                header=base_pb2.HeaderValue(key=key, value=value), append_action=OVERWRITE
            )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK), ok_response=ok
    )


def _denied(denial: Denial, grpc: bool = False) -> external_auth_pb2.CheckResponse:
    # REST: a google.rpc.Status, like every other REST error (the transcoder's
    # convert_grpc_status), with the numeric code, so one error schema in /openapi.json fits all
    # of them. gRPC: Envoy turns the body into grpc-message, so the plain message.
    body = denial.message if grpc else json.dumps({"code": denial.grpc, "message": denial.message})
    response = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=denial.http),  # type: ignore[arg-type]
        body=body,
    )
    if not grpc:
        response.headers.add(
            header=base_pb2.HeaderValue(key="content-type", value="application/json"),
            append_action=OVERWRITE,
        )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=denial.grpc, message=denial.message),
        denied_response=response,
    )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, authorizer: Authorizer) -> None:
        self.authorizer = authorizer

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: object
    ) -> external_auth_pb2.CheckResponse:
        return await self.authorizer.check(request)
