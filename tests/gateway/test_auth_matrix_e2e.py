"""The authorization matrix through the real Envoy: every RPC of the auth, compiler, tracker and
trainer services (enumerated from the neural.v1 descriptors, each RPC's role read from the
protos' `required_role` option) called over gRPC with an empty request under every kind of
credential. Bad credentials of any kind are UNAUTHENTICATED, a role below the RPC's or a key
scoped elsewhere (to other RPCs, or to one run) is PERMISSION_DENIED, and an allowed caller
reaches the handler (whatever it then answers to an empty request, it is the handler's answer,
never an auth refusal or a crash). A service reached directly trusts no internal token authz
did not sign, and no API key at all. A key limited to one run reaches that run, over gRPC and
REST, and nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from neural.v1 import auth_pb2, auth_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from service_kit.auth import Principal
from service_kit.internal_token import HEADER, Signer, load_private_key
from service_kit.roles import ROLES, load_all, public_methods, service_roles

from tests.gateway.harness import Platform, start_platform
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 9
SERVERS = {
    "compiler": "services.compiler",
    "tracker": "services.tracker",
    "trainer": "services.trainer",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}
# The service each server answers for, and so the port to reach it directly.
SERVICES = {
    "neural.v1.AuthService": "authz",
    "neural.v1.CompilerService": "compiler",
    "neural.v1.TrackerService": "tracker",
    "neural.v1.TrainerService": "trainer",
}
# Far above what the matrix sends: the matrix tests authorization, not the rate limiter.
LIMITS = {
    "domain": "neural",
    "window_seconds": 60,
    "roles": {role: {"requests": 100_000} for role in ROLES},
    "default_role": "viewer",
    "anonymous": {"requests": 100_000},
}
SCOPE = "/neural.v1.CompilerService/Validate"  # the one RPC the scoped key may call
CALL_TIMEOUT = 15
# What an allowed call must never end with: an auth refusal, or a handler that broke.
REFUSED = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
# Credentials that name nobody: every RPC that needs a role refuses them as UNAUTHENTICATED.
NOBODY = (
    "none",
    "bad key",
    "revoked key",
    "rotated-old key after its overlap",
    "expired JWT",
    "JWT for another audience",
    "forged x-neural-principal",
)
# Credentials that name a principal of this role.
ROLE_OF = {
    "viewer key": "viewer",
    "user key": "user",
    "admin key": "admin",
    "user JWT": "user",
    # Envoy strips the forged header and authz overwrites it: the caller is the key's viewer.
    "viewer key with a forged admin x-neural-principal": "viewer",
}
SCOPED = "user key scoped to Validate"
LIMITED = "user key limited to one run"


@dataclass(frozen=True)
class Rpc:
    path: str
    role: str  # "" for a public RPC
    method: MethodDescriptor


def every_rpc() -> list[Rpc]:
    load_all()  # registers every neural.v1 descriptor
    rpcs = []
    for name in SERVICES:
        service = descriptor_pool.Default().FindServiceByName(name)
        roles = service_roles(name)
        for method in service.methods:
            path = f"/{name}/{method.name}"
            rpcs.append(Rpc(path, roles.get(path, ""), method))
    return rpcs


def call(channel: grpc.Channel, rpc: Rpc, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    """The status of `rpc` called with an empty request (one empty message for a client
    stream; a server stream ends at its first message)."""
    request = message_factory.GetMessageClass(rpc.method.input_type)()
    serialize = type(request).SerializeToString
    try:
        if rpc.method.client_streaming:
            channel.stream_unary(rpc.path, request_serializer=serialize)(
                iter([request]), metadata=metadata, timeout=CALL_TIMEOUT
            )
        elif rpc.method.server_streaming:
            stream = channel.unary_stream(rpc.path, request_serializer=serialize)(
                request, metadata=metadata, timeout=CALL_TIMEOUT
            )
            try:
                next(stream, None)
            finally:
                stream.cancel()
        else:
            channel.unary_unary(rpc.path, request_serializer=serialize)(
                request, metadata=metadata, timeout=CALL_TIMEOUT
            )
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("auth-matrix")
    limits = tmp / "limits.yaml"
    limits.write_text(yaml.safe_dump(LIMITS))
    env = {"NEURAL_RATELIMIT_CONFIG": str(limits)}
    with start_platform(tmp, SERVERS, REDIS_DB, {"root": "admin"}, env) as running:
        yield running


@pytest.fixture(scope="module")
def gateway(platform: Platform) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(platform.gateway.address) as channel:
        yield channel


def auth_rpc(name: str) -> Rpc:
    return next(r for r in every_rpc() if r.path == f"/neural.v1.AuthService/{name}")


def refused(channel: grpc.Channel, key: str) -> bool:
    return call(channel, auth_rpc("WhoAmI"), bearer(key)) == grpc.StatusCode.UNAUTHENTICATED


@pytest.fixture(scope="module")
def credentials(
    platform: Platform, gateway: grpc.Channel
) -> dict[str, tuple[tuple[str, str], ...]]:
    """Each kind of credential (its name -> the metadata that presents it), made the way a
    client makes them: through the gateway's AuthService."""
    stub = auth_pb2_grpc.AuthServiceStub(gateway)
    root = platform.metadata("root")

    def create(role: int, **kw: object) -> auth_pb2.CreateApiKeyResponse:
        request = auth_pb2.CreateApiKeyRequest(name=f"m-{time.monotonic_ns()}", role=role, **kw)  # type: ignore[arg-type]
        return stub.CreateApiKey(request, metadata=root, timeout=CALL_TIMEOUT)

    viewer = create(auth_pb2.ROLE_VIEWER).key
    user = create(auth_pb2.ROLE_USER).key
    admin = create(auth_pb2.ROLE_ADMIN).key
    scoped = create(auth_pb2.ROLE_USER, scopes=[SCOPE]).key
    limited = create(auth_pb2.ROLE_USER, resources=["runs/r-0"]).key

    revoked = create(auth_pb2.ROLE_USER)
    stub.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(id=revoked.api_key.id), metadata=root, timeout=CALL_TIMEOUT
    )
    until(lambda: refused(gateway, revoked.key), 5, "the revoked key refused")

    old = create(auth_pb2.ROLE_USER)
    stub.RotateApiKey(
        auth_pb2.RotateApiKeyRequest(id=old.api_key.id, overlap_seconds=1),
        metadata=root,
        timeout=CALL_TIMEOUT,
    )
    until(lambda: refused(gateway, old.key), 10, "the rotated-old key refused after its overlap")

    token = stub.IssueToken(auth_pb2.IssueTokenRequest(api_key=user), timeout=CALL_TIMEOUT)
    private = load_private_key(platform.env["NEURAL_AUTHZ_PRIVATE_KEY_FILE"])
    admin_principal = Principal("mallory", "admin")
    # Signed with authz's own key, so only their time or audience is wrong.
    expired = Signer(private, 60, "neural-api").sign(admin_principal, now=time.time() - 3600)
    elsewhere = Signer(private, 60, "not-neural").sign(admin_principal)
    # A genuine internal token: were Envoy to pass it on, a service would trust it.
    forged = (HEADER, Signer(private).sign(admin_principal))
    return {
        "none": (),
        "bad key": bearer("nk_not-a-real-key"),
        "revoked key": bearer(revoked.key),
        "rotated-old key after its overlap": bearer(old.key),
        "expired JWT": bearer(expired),
        "JWT for another audience": bearer(elsewhere),
        "forged x-neural-principal": (forged,),
        "viewer key": bearer(viewer),
        "user key": bearer(user),
        "admin key": (("x-api-key", admin),),
        "user JWT": bearer(token.access_token),
        "viewer key with a forged admin x-neural-principal": (*bearer(viewer), forged),
        SCOPED: bearer(scoped),
        LIMITED: bearer(limited),
    }


def test_the_matrix_covers_every_rpc_of_the_four_services() -> None:
    rpcs = every_rpc()
    for name in SERVICES:
        declared = set(service_roles(name)) | public_methods(name)
        assert {r.path for r in rpcs if r.path.startswith(f"/{name}/")} == declared
    assert len(rpcs) > 50 and all(r.role in ("", *ROLES) for r in rpcs)
    assert SCOPE in {r.path for r in rpcs}


def expectation(rpc: Rpc, kind: str) -> grpc.StatusCode | None:
    """The status the call must end with, or None for "reaches the handler"."""
    if kind in NOBODY:
        return grpc.StatusCode.UNAUTHENTICATED
    role = "user" if kind in (SCOPED, LIMITED) else ROLE_OF[kind]
    if ROLES.index(role) < ROLES.index(rpc.role):
        return grpc.StatusCode.PERMISSION_DENIED
    if kind == SCOPED and rpc.path != SCOPE:
        return grpc.StatusCode.PERMISSION_DENIED
    if kind == LIMITED:  # an empty request names no run, let alone runs/r-0
        return grpc.StatusCode.PERMISSION_DENIED
    return None


def test_every_rpc_answers_each_credential_as_its_role_allows(
    gateway: grpc.Channel, credentials: dict[str, tuple[tuple[str, str], ...]]
) -> None:
    wrong = []
    for rpc in every_rpc():
        if not rpc.role:
            continue
        for kind, metadata in credentials.items():
            got = call(gateway, rpc, metadata)
            want = expectation(rpc, kind)
            if (want is None and got in REFUSED) or (want is not None and got != want):
                wanted = want.name if want is not None else "the handler's answer"
                wrong.append(f"{rpc.path} ({rpc.role}) with {kind}: {got.name}, want {wanted}")
    assert not wrong, "\n".join(wrong)


def test_public_rpcs_answer_alike_whatever_the_credentials(
    gateway: grpc.Channel, credentials: dict[str, tuple[tuple[str, str], ...]]
) -> None:
    public = [rpc for rpc in every_rpc() if not rpc.role]
    assert public
    for rpc in public:
        answers = {kind: call(gateway, rpc, metadata) for kind, metadata in credentials.items()}
        assert set(answers.values()) == {answers["none"]}, (rpc.path, answers)
        assert answers["none"] not in REFUSED - {grpc.StatusCode.UNAUTHENTICATED}, rpc.path
    assert call(gateway, auth_rpc("GetJwks"), ()) == grpc.StatusCode.OK


def test_a_forged_internal_token_straight_to_a_service_is_unauthenticated(
    platform: Platform,
) -> None:
    private = load_private_key(platform.env["NEURAL_AUTHZ_PRIVATE_KEY_FILE"])
    admin = Principal("mallory", "admin")
    tokens = {
        "signed by another key": Signer(Ed25519PrivateKey.generate()).sign(admin),
        "expired": Signer(private).sign(admin, now=time.time() - 3600),
        "for the API audience": Signer(private, 60, "neural-api").sign(admin),
        "not a token": "forged",
    }
    root = platform.metadata("root")  # an admin API key: the gateway's credential, not theirs
    wrong = []
    for rpc in every_rpc():
        if not rpc.role:
            continue
        server = SERVICES[rpc.path.split("/")[1]]
        attempts = {f"a token {what}": ((HEADER, token),) for what, token in tokens.items()}
        if server != "authz":  # the authz service checks API keys itself
            attempts["an admin API key"] = root
        with grpc.insecure_channel(f"127.0.0.1:{platform.ports[server]}") as channel:
            for what, metadata in attempts.items():
                got = call(channel, rpc, metadata)
                if got != grpc.StatusCode.UNAUTHENTICATED:
                    wrong.append(f"{rpc.path} with {what}: {got.name}")
    assert not wrong, "\n".join(wrong)


def test_a_key_limited_to_one_run_reaches_it_alone_over_grpc_and_rest(
    platform: Platform, gateway: grpc.Channel
) -> None:
    root = platform.metadata("root")
    tracker = tracker_pb2_grpc.TrackerServiceStub(gateway)
    experiment = tracker.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="limits")),
        metadata=root,
    )
    mine, other = (
        tracker.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=experiment.id), metadata=root
        ).id
        for _ in range(2)
    )
    # An admin's key (so root's runs are in its reach at all), limited to one of them.
    limited = auth_pb2.CreateApiKeyRequest(
        name="ci-run", role=auth_pb2.ROLE_ADMIN, resources=[f"runs/{mine}"]
    )
    key = auth_pb2_grpc.AuthServiceStub(gateway).CreateApiKey(limited, metadata=root).key
    md = bearer(key)
    tracker.LogMetrics(
        tracker_pb2.LogMetricsRequest(
            run_id=mine, metrics=[tracker_pb2.Metric(key="loss", value=0.5, step=1)]
        ),
        metadata=md,
    )
    assert tracker.GetRun(tracker_pb2.GetRunRequest(id=mine), metadata=md).id == mine
    for refused_call in (
        lambda: tracker.GetRun(tracker_pb2.GetRunRequest(id=other), metadata=md),
        lambda: tracker.SearchRuns(tracker_pb2.SearchRunsRequest(), metadata=md),
    ):
        with pytest.raises(grpc.RpcError) as info:
            refused_call()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    url = platform.gateway.url
    headers = {"authorization": f"Bearer {key}"}
    assert httpx.get(f"{url}/v1/runs/{mine}", headers=headers, timeout=30).status_code == 200
    denied = httpx.get(f"{url}/v1/runs/{other}", headers=headers, timeout=30)
    assert denied.status_code == 403 and "limited to runs/" in denied.json()["message"]
