"""The authz service as a real process: Envoy's Check over gRPC with the allow/deny matrix,
AuthService, the audit log, offline bootstrap keys, and reflection over every service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from neural.v1 import auth_pb2, auth_pb2_grpc, compiler_pb2, compiler_pb2_grpc
from service_kit.auth import Principal
from service_kit.internal_token import HEADER, Signer, Verifier, load_private_key

from gateway.authz import keys
from tests.conftest import ROOT
from tests.gateway.harness import create_key
from tests.services.stack import VENV_BIN, Stack, make_stack

pytestmark = pytest.mark.e2e

VALIDATE = ("POST", "/neural.v1.CompilerService/Validate")
COMPILE = ("POST", "/neural.v1.CompilerService/Compile")
LIST_WORKERS = ("POST", "/neural.v1.TrainerService/ListWorkers")
DELEGATE = "/neural.v1.AuthService/IssueDelegatedToken"


@pytest.fixture(scope="module")
def authz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("authz")
    private, public = keys.generate(tmp / "keys")
    stack = make_stack(tmp, f"sqlite+aiosqlite:///{tmp / 'neural.db'}", 11, service="authz")
    stack.env["NEURAL_AUTHZ_PRIVATE_KEY_FILE"] = str(private)
    stack.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] = str(public)
    stack.start_server("gateway.authz")
    try:
        stack.wait_serving()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def admin_key(authz: Stack) -> str:
    return create_key(authz.env, "root", "admin")


@pytest.fixture(scope="module")
def channel(authz: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(authz.address) as ch:
        yield ch


def check(
    channel: grpc.Channel, route: tuple[str, str], headers: dict[str, str] | None = None
) -> external_auth_pb2.CheckResponse:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = route
    http.headers.update(headers or {})
    return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def denied(response: external_auth_pb2.CheckResponse) -> int:
    """The HTTP status of a denial (0 when allowed), after checking its JSON body."""
    if response.HasField("ok_response"):
        return 0
    body = json.loads(response.denied_response.body)
    assert set(body) == {"code", "message"}
    return response.denied_response.status.code


def auth(channel: grpc.Channel) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(channel)


def create(channel: grpc.Channel, admin_key: str, role: int, **kw: object) -> str:
    request = auth_pb2.CreateApiKeyRequest(name=f"k-{time.monotonic_ns()}", role=role, **kw)  # type: ignore[arg-type]
    return auth(channel).CreateApiKey(request, metadata=[("x-api-key", admin_key)]).key


def test_an_allowed_request_carries_a_signed_principal_upstream(
    authz: Stack, channel: grpc.Channel, admin_key: str
) -> None:
    viewer = create(channel, admin_key, auth_pb2.ROLE_VIEWER)
    response = check(channel, VALIDATE, {**bearer(viewer), HEADER: "forged"})
    assert denied(response) == 0
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    assert set(response.ok_response.headers_to_remove) == {"authorization", "x-api-key"}
    assert headers["x-neural-role"] == "viewer"
    who = Verifier.from_file(authz.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]).verify(headers[HEADER])
    assert who is not None and who.role == "viewer" and who.subject == headers["x-neural-subject"]
    # x-api-key works as well, and REST paths find their RPC by its HTTP rule
    rest = check(channel, ("POST", "/v1/programs:validate"), {"x-api-key": viewer})
    assert denied(rest) == 0


def test_roles_decide_what_each_principal_may_call(channel: grpc.Channel, admin_key: str) -> None:
    viewer = create(channel, admin_key, auth_pb2.ROLE_VIEWER)
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    matrix = {
        (viewer, VALIDATE): 0,
        (viewer, COMPILE): 403,
        (viewer, ("POST", "/v1/models:compile")): 403,
        (user, COMPILE): 0,
        (user, LIST_WORKERS): 403,
        (admin_key, LIST_WORKERS): 0,
        (admin_key, COMPILE): 0,
    }
    for (key, route), status in matrix.items():
        assert denied(check(channel, route, bearer(key))) == status, route


def test_missing_and_bad_credentials_are_401(channel: grpc.Channel) -> None:
    assert denied(check(channel, VALIDATE)) == 401
    assert denied(check(channel, VALIDATE, bearer("nk_not-a-key"))) == 401
    assert denied(check(channel, VALIDATE, bearer("garbage"))) == 401
    # a public RPC needs none; a path that names no RPC is 404
    assert denied(check(channel, ("POST", "/neural.v1.AuthService/IssueToken"))) == 0
    assert denied(check(channel, ("GET", "/v1/jwks.json"))) == 0
    assert denied(check(channel, ("POST", "/grpc.health.v1.Health/Check"))) == 0
    assert denied(check(channel, ("GET", "/v1/no-such-thing"))) == 404


def test_a_revoked_key_is_refused_within_a_second(channel: grpc.Channel, admin_key: str) -> None:
    request = auth_pb2.CreateApiKeyRequest(name="leaked", role=auth_pb2.ROLE_USER)
    created = auth(channel).CreateApiKey(request, metadata=[("x-api-key", admin_key)])
    assert denied(check(channel, COMPILE, bearer(created.key))) == 0
    revoked = auth(channel).RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=created.api_key.id), metadata=[("x-api-key", admin_key)]
    )
    assert revoked.revoked
    started = time.monotonic()
    while denied(check(channel, COMPILE, bearer(created.key))) == 0:
        assert time.monotonic() - started < 1.0, "a revoked key worked for over a second"
    assert denied(check(channel, COMPILE, bearer(created.key))) == 401


def test_a_rotated_key_works_until_its_overlap_ends(channel: grpc.Channel, admin_key: str) -> None:
    request = auth_pb2.CreateApiKeyRequest(name="rotating", role=auth_pb2.ROLE_USER)
    created = auth(channel).CreateApiKey(request, metadata=[("x-api-key", admin_key)])
    rotated = auth(channel).RotateApiKey(
        auth_pb2.RotateApiKeyRequest(id=created.api_key.id, overlap_seconds=1),
        metadata=[("x-api-key", created.key)],  # a user may rotate their own key
    )
    assert rotated.key != created.key and rotated.api_key.name == "rotating"
    assert denied(check(channel, COMPILE, bearer(created.key))) == 0  # in the overlap
    started = time.monotonic()
    while denied(check(channel, COMPILE, bearer(created.key))) == 0:
        assert time.monotonic() - started < 4, "the old key outlived its overlap"
    assert denied(check(channel, COMPILE, bearer(created.key))) == 401
    assert denied(check(channel, COMPILE, bearer(rotated.key))) == 0


def test_a_scoped_key_is_refused_outside_its_scope(channel: grpc.Channel, admin_key: str) -> None:
    scoped = create(channel, admin_key, auth_pb2.ROLE_USER, scopes=[VALIDATE[1]])
    assert denied(check(channel, VALIDATE, bearer(scoped))) == 0
    assert denied(check(channel, COMPILE, bearer(scoped))) == 403


def test_api_tokens_expire_and_name_their_audience(
    authz: Stack, channel: grpc.Channel, admin_key: str
) -> None:
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    issued = auth(channel).IssueToken(auth_pb2.IssueTokenRequest(api_key=user))
    assert issued.token_type == "Bearer" and issued.expires_in == 3600
    assert denied(check(channel, COMPILE, bearer(issued.access_token))) == 0
    private = load_private_key(authz.env["NEURAL_AUTHZ_PRIVATE_KEY_FILE"])
    who = Principal("alice", "admin")
    expired = Signer(private, 60, "neural-api").sign(who, now=time.time() - 3600)
    assert denied(check(channel, COMPILE, bearer(expired))) == 401
    # the internal token is for services, not a credential at the door
    internal = Signer(private).sign(who)
    assert denied(check(channel, COMPILE, bearer(internal))) == 401
    no_nbf = jwt.encode(
        {"iss": "neural-authz", "aud": "neural-api", "sub": "a", "role": "admin", "exp": 2**33},
        private,
        algorithm="EdDSA",
        headers={"kid": Signer(private).kid},
    )
    assert denied(check(channel, COMPILE, bearer(no_nbf))) == 401
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).IssueToken(auth_pb2.IssueTokenRequest(api_key="nk_wrong"))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_verify_offline_with_the_published_key_set(
    channel: grpc.Channel, admin_key: str
) -> None:
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    token = auth(channel).IssueToken(auth_pb2.IssueTokenRequest(api_key=user)).access_token
    jwks = auth(channel).GetJwks(auth_pb2.GetJwksRequest())  # public: no credentials
    kid = jwt.get_unverified_header(token)["kid"]
    (entry,) = [k for k in jwks.keys if k.kid == kid]
    key = jwt.PyJWK(
        {"kty": entry.kty, "crv": entry.crv, "x": entry.x, "kid": entry.kid, "alg": entry.alg}
    )
    claims = jwt.decode(token, key, algorithms=["EdDSA"], audience="neural-api")
    assert claims["role"] == "user" and claims["iss"] == "neural-authz"


def test_auth_service_keeps_keys_to_their_owners(channel: grpc.Channel, admin_key: str) -> None:
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    meta = [("x-api-key", user)]
    who = auth(channel).WhoAmI(auth_pb2.WhoAmIRequest(), metadata=meta)
    assert who.role == auth_pb2.ROLE_USER
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(name="x"), metadata=meta)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    mine = auth(channel).ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=meta).api_keys
    assert [k.owner for k in mine] == [who.subject]
    everyone = auth(channel).ListApiKeys(
        auth_pb2.ListApiKeysRequest(page_size=1), metadata=[("x-api-key", admin_key)]
    )
    assert len(everyone.api_keys) == 1 and everyone.next_page_token
    root = next(k for k in everyone.api_keys)
    with pytest.raises(grpc.RpcError) as info:  # another's key reads as absent
        auth(channel).RevokeApiKey(auth_pb2.RevokeApiKeyRequest(id=root.id), metadata=meta)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).WhoAmI(auth_pb2.WhoAmIRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_auth_service_mistakes_are_the_callers_never_internal(
    channel: grpc.Channel, admin_key: str
) -> None:
    meta = [("x-api-key", admin_key)]
    stub = auth(channel)
    far = auth_pb2.CreateApiKeyRequest(name="far", expire_time={"seconds": 2**62})
    cases = [
        (stub.CreateApiKey, auth_pb2.CreateApiKeyRequest(name=""), "name"),
        (stub.CreateApiKey, far, "expire_time"),
        (stub.CreateApiKey, auth_pb2.CreateApiKeyRequest(name="x", scopes=["nope"]), "scopes"),
        (stub.RotateApiKey, auth_pb2.RotateApiKeyRequest(id="x", overlap_seconds=2**62), "overlap"),
        (stub.RotateApiKey, auth_pb2.RotateApiKeyRequest(id="x", overlap_seconds=-1), "overlap"),
        (stub.ListApiKeys, auth_pb2.ListApiKeysRequest(page_token="junk"), "page_token"),
        (stub.ListApiKeys, auth_pb2.ListApiKeysRequest(page_size=-1), "page_size"),
        (stub.ListAuditEvents, auth_pb2.ListAuditEventsRequest(page_token="x.y"), "page_token"),
    ]
    for call, request, field in cases:
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=meta, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value)
        assert field in (info.value.details() or "")
    for call, request in (
        (stub.RevokeApiKey, auth_pb2.RevokeApiKeyRequest(id="no-such-key")),
        (stub.RotateApiKey, auth_pb2.RotateApiKeyRequest(id="x" * 500)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=meta, timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_auth_service_refuses_a_forged_internal_token(channel: grpc.Channel) -> None:
    forged = Signer(Ed25519PrivateKey.generate()).sign(Principal("mallory", "admin"))
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=[(HEADER, forged)])
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_decisions_and_changes_are_in_the_audit_log(channel: grpc.Channel, admin_key: str) -> None:
    check(channel, LIST_WORKERS, bearer("nk_audited-bad-key"))
    viewer = create(channel, admin_key, auth_pb2.ROLE_VIEWER)
    check(channel, LIST_WORKERS, bearer(viewer))
    events = (
        auth(channel)
        .ListAuditEvents(
            auth_pb2.ListAuditEventsRequest(page_size=100), metadata=[("x-api-key", admin_key)]
        )
        .events
    )
    assert any(
        e.action == f"POST {LIST_WORKERS[1]}" and not e.allowed and "invalid" in e.reason
        for e in events
    )
    assert any(e.action == "CreateApiKey" and e.allowed and e.subject == "root" for e in events)
    # a refusal for the role names whom it refused, and the key
    refused = next(e for e in events if e.reason == "ListWorkers needs the admin role")
    assert refused.subject.startswith("k-") and refused.target and not refused.allowed


def test_a_key_made_with_neural_keys_bootstraps_the_gateway(authz: Stack) -> None:
    first = create_key(authz.env, "first-admin", "admin", [str(VENV_BIN / "neural-keys")])
    with grpc.insecure_channel(authz.address) as ch:
        assert denied(check(ch, LIST_WORKERS, bearer(first))) == 0
        created = auth(ch).CreateApiKey(
            auth_pb2.CreateApiKeyRequest(name="next"), metadata=[("x-api-key", first)]
        )
        assert created.key.startswith("nk_")


def test_a_workers_key_gets_tokens_for_job_owners_and_nothing_else(
    authz: Stack, channel: grpc.Channel, admin_key: str
) -> None:
    worker = create(channel, admin_key, auth_pb2.ROLE_ADMIN, scopes=[DELEGATE])
    md = [("authorization", f"Bearer {worker}")]
    issued = auth(channel).IssueDelegatedToken(
        auth_pb2.IssueDelegatedTokenRequest(subject="alice"), metadata=md
    )
    assert issued.token_type == "Internal" and 0 < issued.expires_in <= 60
    # what a service would make of it: alice, a user, by the authz service's key
    who = Verifier.from_file(authz.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]).verify(issued.access_token)
    assert who is not None and (who.subject, who.role) == ("alice", "user")
    # the key reaches nothing else, straight or through the gateway
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).CreateApiKey(auth_pb2.CreateApiKeyRequest(name="x"), metadata=md)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied(check(channel, LIST_WORKERS, bearer(worker))) == 403
    # never more than the caller's own role; a subject is required
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).IssueDelegatedToken(
            auth_pb2.IssueDelegatedTokenRequest(subject="bob", role=auth_pb2.ROLE_ADMIN),
            metadata=[("x-api-key", user)],
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # IssueDelegatedToken: admin
    with pytest.raises(grpc.RpcError) as info:
        auth(channel).IssueDelegatedToken(auth_pb2.IssueDelegatedTokenRequest(), metadata=md)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "subject" in (info.value.details() or "")


def test_a_key_limited_to_a_run_passes_its_limits_upstream(
    authz: Stack, channel: grpc.Channel, admin_key: str
) -> None:
    limited = auth(channel).CreateApiKey(
        auth_pb2.CreateApiKeyRequest(name="ci-run", resources=["runs/r-1"]),
        metadata=[("x-api-key", admin_key)],
    )
    assert list(limited.api_key.resources) == ["runs/r-1"]
    response = check(channel, ("GET", "/v1/runs/r-1"), bearer(limited.key))
    assert denied(response) == 0
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    who = Verifier.from_file(authz.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]).verify(headers[HEADER])
    assert who is not None and who.resources == ("runs/r-1",)
    # the limits survive a rotation and an exchange for an API token
    rotated = auth(channel).RotateApiKey(
        auth_pb2.RotateApiKeyRequest(id=limited.api_key.id), metadata=[("x-api-key", admin_key)]
    )
    assert list(rotated.api_key.resources) == ["runs/r-1"]
    token = auth(channel).IssueToken(auth_pb2.IssueTokenRequest(api_key=rotated.key)).access_token
    checked = check(channel, ("GET", "/v1/runs/r-1"), bearer(token))
    headers = {h.header.key: h.header.value for h in checked.ok_response.headers}
    who = Verifier.from_file(authz.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]).verify(headers[HEADER])
    assert who is not None and who.resources == ("runs/r-1",)
    # a resource of no known kind is the caller's mistake, named
    for bad in ("widgets/1", "runs/", "runs/a b", "runs"):
        with pytest.raises(grpc.RpcError) as info:
            auth(channel).CreateApiKey(
                auth_pb2.CreateApiKeyRequest(name="bad", resources=[bad]),
                metadata=[("x-api-key", admin_key)],
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "resources" in (info.value.details() or "")


def test_reflection_describes_every_neural_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    names = {s.name for s in response.list_services_response.service}
    assert {
        "neural.v1.CompilerService",
        "neural.v1.TrainerService",
        "neural.v1.TrackerService",
        "neural.v1.DeployerService",
        "neural.v1.AuthService",
    } <= names


def test_the_server_needs_its_private_key(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", 11, service="authz")
    done = subprocess.run(
        [sys.executable, "-m", "gateway.authz"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "NEURAL_AUTHZ_PRIVATE_KEY_FILE" in done.stderr


def test_a_compiler_reached_directly_trusts_only_tokens_authz_signed(
    authz: Stack, tmp_path: Path
) -> None:
    compiler = make_stack(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'c.db'}", 12)
    compiler.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] = authz.env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]
    compiler.start_server()
    try:
        compiler.wait_serving()
        private = load_private_key(authz.env["NEURAL_AUTHZ_PRIVATE_KEY_FILE"])
        genuine = Signer(private).sign(Principal("alice", "viewer"))
        forged = Signer(Ed25519PrivateKey.generate()).sign(Principal("alice", "admin"))
        request = compiler_pb2.ValidateRequest(source="network N { input: (4,) layers: Dense(2) }")
        with grpc.insecure_channel(compiler.address) as ch:
            stub = compiler_pb2_grpc.CompilerServiceStub(ch)
            stub.Validate(request, metadata=[(HEADER, genuine)], timeout=30)
            for meta in ([(HEADER, forged)], [], [(HEADER, forged), ("x-api-key", "nk_x")]):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Validate(request, metadata=meta, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as info:  # a viewer's token does not compile
                stub.Compile(compiler_pb2.CompileRequest(), metadata=[(HEADER, genuine)])
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # an API key the authz service would accept is no credential here
            key = create_key(authz.env, "direct", "admin")
            for meta in ([("x-api-key", key)], [("authorization", f"Bearer {key}")]):
                with pytest.raises(grpc.RpcError) as info:
                    stub.Validate(request, metadata=meta, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "through the gateway" in (info.value.details() or "")
    finally:
        compiler.stop_all()


MODEL_INFER = ("POST", "/inference.GRPCInferenceService/ModelInfer")
SERVER_LIVE = ("POST", "/inference.GRPCInferenceService/ServerLive")


def cluster_of(response: external_auth_pb2.CheckResponse) -> str:
    headers = {h.header.key: h.header.value for h in response.ok_response.headers}
    return headers.get("x-neural-deployment-cluster", "")


def test_a_prediction_is_routed_to_the_deployment_it_names(
    channel: grpc.Channel, admin_key: str
) -> None:
    user = create(channel, admin_key, auth_pb2.ROLE_USER)
    viewer = create(channel, admin_key, auth_pb2.ROLE_VIEWER)
    named = {"neural-deployment": "digits"}
    allowed = check(channel, MODEL_INFER, {**bearer(user), **named})
    assert denied(allowed) == 0 and cluster_of(allowed) == "deployment.digits"
    # public RPCs of the protocol are routed too, with no identity
    live = check(channel, SERVER_LIVE, named)
    assert denied(live) == 0 and cluster_of(live) == "deployment.digits"
    assert denied(check(channel, MODEL_INFER, {**bearer(viewer), **named})) == 403
    assert denied(check(channel, MODEL_INFER, named)) == 401
    # no deployment named, or not a name: the caller's mistake, before any credential check
    for headers in ({}, {"neural-deployment": "Digits!"}, {"neural-deployment": "a" * 64}):
        refused = check(channel, MODEL_INFER, {**bearer(user), **headers})
        assert denied(refused) == 400
        assert "neural-deployment" in json.loads(refused.denied_response.body)["message"]


def test_a_key_limited_to_one_deployment_predicts_there_alone(
    channel: grpc.Channel, admin_key: str
) -> None:
    limited = create(channel, admin_key, auth_pb2.ROLE_USER, resources=["deployments/digits"])
    mine = check(channel, MODEL_INFER, {**bearer(limited), "neural-deployment": "digits"})
    assert denied(mine) == 0 and cluster_of(mine) == "deployment.digits"
    other = check(channel, MODEL_INFER, {**bearer(limited), "neural-deployment": "iris"})
    assert denied(other) == 403
    assert "limited to deployments/digits" in json.loads(other.denied_response.body)["message"]
