"""Envoy's ext_authz `Check`: may this request through, and as whom?

The caller presents `authorization: Bearer <API key or JWT>` or `x-api-key: <API key>`. On
allow, the upstream request gets `x-neural-principal` (an internal token authz signed, what
services trust), `x-neural-subject` and `x-neural-role` (for the rate limiter), each
overwriting whatever the client sent, and loses `authorization` and `x-api-key`: the
long-lived secret goes no further than the door. On deny, Envoy answers the client 401 (no,
bad, expired or revoked credentials) or 403 (a role or scope that does not allow the RPC)
with a JSON body `{"code": ..., "message": ...}`; 404 for a path that names no RPC.

Every request is decided and audited afresh; what is reused is only work whose result cannot
differ: one key lookup shared by the concurrent requests that present the same credential,
and the signed internal token of a principal while more than half its life is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from service_kit.auth import Principal
from service_kit.internal_token import HEADER as PRINCIPAL_HEADER
from service_kit.internal_token import Signer, Verifier
from service_kit.roles import INFERENCE_SERVICE

from .audit import AuditLog
from .routes import Routes
from .store import KEY_PREFIX, Grant, KeyStore

log = logging.getLogger("neural.authz.check")

SUBJECT_HEADER = "x-neural-subject"
# Predictions: the deployment a caller names, and the cluster of its replicas (written by the
# deployer's controller as `deployment.<name>`).
INFERENCE_PREFIX = f"/{INFERENCE_SERVICE}/"
DEPLOYMENT_HEADER = "neural-deployment"
CLUSTER_HEADER = "x-neural-deployment-cluster"
DEPLOYMENT_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
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


def _headers(http: external_auth_pb2.AttributeContext.HttpRequest) -> Mapping[str, str]:
    # The ext_authz contract (attribute_context.proto): "All header keys will be lower-cased",
    # so the map is used as it is; header_map instead when Envoy passes raw header bytes.
    if not http.header_map.headers:
        return http.headers
    headers = {k.lower(): v for k, v in http.headers.items()}
    for h in http.header_map.headers:
        headers[h.key.lower()] = h.value or h.raw_value.decode("utf-8", "replace")
    return headers


class Answers:
    """The allow answer for a principal, with its internal token, made once and handed out
    again while more than half the token's life is left: signing (EdDSA) and building the
    answer were most of a Check's own work. Looked up by the whole Principal (subject, role,
    key, resources), so a principal never gets another's token; and only after the request
    was decided and audited, so a revoked key is refused as before. Tokens handed out live no
    longer than fresh ones would: each keeps the expiry it was signed with."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = 10_000) -> None:
        self.clock = clock
        self.max_entries = max_entries
        # principal -> (time to sign anew, the signer, the answer)
        self._answers: dict[Principal, tuple[float, Signer, external_auth_pb2.CheckResponse]] = {}

    def allowed(self, principal: Principal, signer: Signer) -> external_auth_pb2.CheckResponse:
        now = self.clock()
        hit = self._answers.get(principal)
        if hit is not None and now < hit[0] and hit[1] is signer:
            return hit[2]
        answer = _allowed(principal, signer.sign(principal, now))
        if len(self._answers) >= self.max_entries:
            self._answers.clear()
        # Signer.sign counts the token's life from the whole second.
        self._answers[principal] = (int(now) + signer.ttl_seconds / 2, signer, answer)
        return answer


class Authorizer:
    """The decision itself: credentials -> principal -> role and scope of the RPC."""

    def __init__(
        self,
        keys: KeyStore,
        tokens: Verifier | None,
        signer: Signer,
        audit: AuditLog,
    ) -> None:
        self.keys = keys
        self.tokens = tokens  # checks the API tokens IssueToken hands out
        self.signer = signer  # signs the internal tokens passed upstream
        self.audit = audit
        self.routes = Routes()

    async def grant_of(self, credential: str) -> Grant | None:
        """What an API key or an API token (JWT) allows; None when it is not valid now."""
        if credential.startswith(KEY_PREFIX):
            return await self.keys.authenticate(credential)
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
        grant = await self._grant(credential)
        if grant is None:
            return _unauthenticated("invalid, expired or revoked credentials")
        rpc = route.rpc.rsplit("/", 1)[-1]
        who = grant.principal
        if not who.allows(route.role):
            return _forbidden(f"{rpc} needs the {route.role} role", who)
        if not grant.permits(route.rpc):
            return _forbidden(f"this key's scopes do not include {rpc}", who)
        return who

    @cached_property
    def _lookups(self) -> dict[str, asyncio.Future[Grant | None]]:
        """The grant lookups in flight, by credential."""
        return {}

    @cached_property
    def _answers(self) -> Answers:
        return Answers()

    async def _grant(self, credential: str) -> Grant | None:
        """grant_of, once for the requests in flight with the same credential: when its
        cached check expires, they wait for one lookup rather than each making its own (a
        lookup that started before they arrived, so no older than they are)."""
        pending = self._lookups.get(credential)
        if pending is not None:
            await asyncio.wait((pending,))  # raises only when this request is cancelled
            if not pending.cancelled():
                return pending.result()
            return await self.grant_of(credential)  # the first request failed: ask anew
        pending = asyncio.get_running_loop().create_future()
        self._lookups[credential] = pending
        try:
            grant = await self.grant_of(credential)
        except BaseException:
            pending.cancel()  # each waiting request then looks up for itself
            raise
        finally:
            del self._lookups[credential]
        pending.set_result(grant)
        return grant

    async def check(
        self, request: external_auth_pb2.CheckRequest
    ) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        headers = _headers(http)
        deployment = ""
        outcome: Principal | Denial | None
        if http.path.startswith(INFERENCE_PREFIX):
            deployment = headers.get(DEPLOYMENT_HEADER, "").strip()
            outcome = _unnamed(deployment) or await self.decide(http.method, http.path, headers)
        else:
            outcome = await self.decide(http.method, http.path, headers)
        if deployment and isinstance(outcome, Principal):
            outcome = _within(outcome, f"deployments/{deployment}")
        action = f"{http.method} {http.path.split('?', 1)[0]}"
        if isinstance(outcome, Denial):
            self.audit.record(
                outcome.subject, action, False, outcome.message, target=outcome.key_id
            )
            grpc = headers.get("content-type", "").startswith("application/grpc")
            return _denied(outcome, grpc)
        if outcome is None:
            answer = PUBLIC
        else:
            self.audit.record(outcome.subject, action, True, target=outcome.key_id)
            answer = self._answers.allowed(outcome, self.signer)
        return _to_deployment(answer, deployment) if deployment else answer


def _unnamed(deployment: str) -> Denial | None:
    """A prediction names its deployment in a header, which picks the route's cluster."""
    if DEPLOYMENT_NAME.match(deployment):
        return None
    why = "must name a deployment (a DNS-1123 label)" if deployment else "is missing"
    return Denial(
        400,
        "INVALID_ARGUMENT",
        code_pb2.INVALID_ARGUMENT,
        f"header {DEPLOYMENT_HEADER} {why}: send '{DEPLOYMENT_HEADER}: <deployment name>'",
    )


def _within(who: Principal, resource: str) -> Principal | Denial:
    if who.reaches(resource):
        return who
    limits = ", ".join(who.resources)[:200]
    return _forbidden(f"these credentials are limited to {limits}; not {resource}", who)


def _to_deployment(
    answer: external_auth_pb2.CheckResponse, deployment: str
) -> external_auth_pb2.CheckResponse:
    """The answer, with the cluster of the deployment's replicas (Envoy's route picks its
    cluster by this header, after ext_authz: clear_route_cache)."""
    routed = external_auth_pb2.CheckResponse()
    routed.CopyFrom(answer)
    routed.ok_response.headers.add(
        header=base_pb2.HeaderValue(key=CLUSTER_HEADER, value=f"deployment.{deployment}"),
        append_action=OVERWRITE,
    )
    return routed


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


PUBLIC = _allowed(None, "")  # the answer for a public RPC: no identity, credentials removed


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
