"""The authz service's internal token: EdDSA-signed, short-lived, checked by every service
with the public key alone; a service reached directly refuses a forged one, and any other
credential; a token limited to resources reaches only RPCs on those resources."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from neural.v1 import compiler_pb2, tracker_pb2
from service_kit.auth import Principal
from service_kit.interceptors import Interceptor
from service_kit.internal_token import (
    HEADER,
    Signer,
    Verifier,
    load_private_key,
    load_public_keys,
)
from service_kit.roles import Resource, collections, service_resources, service_roles
from service_kit.server import ServiceSpec, interceptor
from service_kit.settings import SettingsError, load

from gateway.authz import keys

pytestmark = pytest.mark.unit

ALICE = Principal("alice", "viewer", "key-1")
COMPILER = "neural.v1.CompilerService"


def pair() -> tuple[Signer, Verifier]:
    key = Ed25519PrivateKey.generate()
    return Signer(key), Verifier([key.public_key()])


def test_a_signed_token_names_its_principal() -> None:
    signer, verifier = pair()
    token = signer.sign(ALICE)
    assert verifier.verify(token) == ALICE
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA" and header["kid"] == signer.kid
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == "neural-authz" and claims["aud"] == "neural-services"
    assert claims["exp"] - claims["iat"] == 60


def test_expired_forged_and_foreign_tokens_are_refused() -> None:
    signer, verifier = pair()
    other, _ = pair()
    assert verifier.verify(signer.sign(ALICE, now=time.time() - 120)) is None  # expired
    assert verifier.verify(other.sign(ALICE)) is None  # another authz's key
    # another key posing under this key's kid: the signature does not hold
    forged = jwt.encode(
        jwt.decode(signer.sign(ALICE), options={"verify_signature": False}),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": signer.kid},
    )
    assert verifier.verify(forged) is None
    # an HMAC token under the kid (algorithm confusion) is not accepted either
    hmac = jwt.encode({"sub": "x", "role": "admin"}, "s" * 32, headers={"kid": signer.kid})
    assert verifier.verify(hmac) is None
    assert verifier.verify("not a token") is None


@pytest.mark.parametrize(
    ("claim", "value"), [("aud", "somebody-else"), ("iss", "not-authz"), ("role", "root")]
)
def test_wrong_audience_issuer_or_role_is_refused(claim: str, value: str) -> None:
    key = Ed25519PrivateKey.generate()
    signer, verifier = Signer(key), Verifier([key.public_key()])
    claims = jwt.decode(signer.sign(ALICE), options={"verify_signature": False})
    claims[claim] = value
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": signer.kid})
    assert verifier.verify(token) is None


def test_missing_claims_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    signer, verifier = Signer(key), Verifier([key.public_key()])
    claims = jwt.decode(signer.sign(ALICE), options={"verify_signature": False})
    del claims["exp"]
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": signer.kid})
    assert verifier.verify(token) is None


def test_generate_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = keys.generate(tmp_path / "k")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    signer = Signer(load_private_key(private))
    assert Verifier(load_public_keys(public)).verify(signer.sign(ALICE)) == ALICE
    # kept on a second run (tokens in flight stay valid), replaced when forced
    assert keys.generate(tmp_path / "k") == (private, public)
    assert Signer(load_private_key(private)).kid == signer.kid
    keys.generate(tmp_path / "k", force=True)
    assert Signer(load_private_key(private)).kid != signer.kid
    assert keys.main(["generate", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / keys.PUBLIC).exists()


# ------------------------------------------------ a service reached directly, without Envoy


async def _validate(request: compiler_pb2.ValidateRequest, context: object) -> object:
    return compiler_pb2.ValidateResponse()


@asynccontextmanager
async def serving(
    service: str, interceptor_: Interceptor, handler: Any, request: Any, names: tuple[str, ...]
) -> AsyncIterator[str]:
    """`handler` as RPCs `names` of `service` behind `interceptor_`; yields the address."""
    server = grpc.aio.server(interceptors=[interceptor_])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=request.FromString,
            response_serializer=lambda reply: reply.SerializeToString(),
        )
        for name in names
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def compiler_address() -> AsyncIterator[tuple[str, Signer]]:
    """The kit's interceptor in front of Validate (viewer) and Compile (user), with the
    public key of one authz keypair, as every service runs it."""
    signer, verifier = pair()
    guard = Interceptor("compiler", service_roles(COMPILER), tokens=verifier)
    names = ("Validate", "Compile")
    async with serving(COMPILER, guard, _validate, compiler_pb2.ValidateRequest, names) as address:
        yield address, signer


async def _call(address: str, method: str, meta: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/{COMPILER}/{method}",
            request_serializer=compiler_pb2.ValidateRequest.SerializeToString,
            response_deserializer=compiler_pb2.ValidateResponse.FromString,
        )
        try:
            await call(compiler_pb2.ValidateRequest(), metadata=meta)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK


async def test_a_service_refuses_forged_internal_tokens(
    compiler_address: tuple[str, Signer],
) -> None:
    address, signer = compiler_address
    forger, _ = pair()
    admin = Principal("mallory", "admin")
    assert await _call(address, "Validate", ()) == grpc.StatusCode.UNAUTHENTICATED
    forged = forger.sign(admin)
    assert await _call(address, "Validate", ((HEADER, forged),)) == grpc.StatusCode.UNAUTHENTICATED
    expired = signer.sign(admin, now=time.time() - 3600)
    assert await _call(address, "Validate", ((HEADER, expired),)) == grpc.StatusCode.UNAUTHENTICATED
    # a forged token next to other credentials is still refused, not passed over
    both = ((HEADER, forged), ("authorization", "Bearer nk_whatever"))
    assert await _call(address, "Compile", both) == grpc.StatusCode.UNAUTHENTICATED


async def test_a_valid_internal_token_carries_the_role(
    compiler_address: tuple[str, Signer],
) -> None:
    address, signer = compiler_address
    viewer = ((HEADER, signer.sign(ALICE)),)
    assert await _call(address, "Validate", viewer) == grpc.StatusCode.OK
    assert await _call(address, "Compile", viewer) == grpc.StatusCode.PERMISSION_DENIED
    user = ((HEADER, signer.sign(Principal("bob", "user"))),)
    assert await _call(address, "Compile", user) == grpc.StatusCode.OK


def test_a_service_without_the_public_key_does_not_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NEURAL_AUTHZ_PUBLIC_KEY_FILE", raising=False)
    monkeypatch.delenv("NEURAL_AUTH_DISABLED", raising=False)
    spec = ServiceSpec("compiler", [], service_roles(COMPILER))
    with pytest.raises(SettingsError, match="NEURAL_AUTHZ_PUBLIC_KEY_FILE"):
        interceptor(spec, load("compiler"))


async def test_api_keys_and_api_tokens_sent_straight_to_a_service_are_refused(
    compiler_address: tuple[str, Signer],
) -> None:
    address, signer = compiler_address
    # Even a token signed with the right key, in the header outside callers use: services
    # read only x-neural-principal, which the gateway alone sets.
    for meta in (
        (("authorization", "Bearer nk_" + "a" * 43),),
        (("x-api-key", "nk_" + "a" * 43),),
        (("authorization", f"Bearer {signer.sign(Principal('bob', 'admin'))}"),),
    ):
        assert await _call(address, "Validate", meta) == grpc.StatusCode.UNAUTHENTICATED


# ------------------------------------------------------------ tokens limited to resources

TRACKER = "neural.v1.TrackerService"


async def _get_run(request: tracker_pb2.GetRunRequest, context: object) -> tracker_pb2.Run:
    return tracker_pb2.Run(id=request.id)


@pytest.fixture
async def tracker_address() -> AsyncIterator[tuple[str, Signer]]:
    """GetRun (acts on runs/{id}) and SearchRuns (on no single resource) behind the kit's
    interceptor, with the resources the tracker's protos declare."""
    signer, verifier = pair()
    guard = Interceptor(
        "tracker", service_roles(TRACKER), tokens=verifier, resources=service_resources(TRACKER)
    )
    names = ("GetRun", "SearchRuns")
    async with serving(TRACKER, guard, _get_run, tracker_pb2.GetRunRequest, names) as address:
        yield address, signer


async def _get(address: str, method: str, run_id: str, token: str) -> grpc.aio.AioRpcError | None:
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(
            f"/{TRACKER}/{method}",
            request_serializer=tracker_pb2.GetRunRequest.SerializeToString,
            response_deserializer=tracker_pb2.Run.FromString,
        )
        try:
            await call(tracker_pb2.GetRunRequest(id=run_id), metadata=((HEADER, token),))
        except grpc.aio.AioRpcError as exc:
            return exc
        return None


async def test_a_token_limited_to_a_run_reaches_that_run_alone(
    tracker_address: tuple[str, Signer],
) -> None:
    address, signer = tracker_address
    limited = signer.sign(Principal("ci", "user", "key-9", ("runs/r1",)))
    assert await _get(address, "GetRun", "r1", limited) is None
    other = await _get(address, "GetRun", "r2", limited)
    assert other is not None and other.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "limited to runs/r1" in (other.details() or "")
    assert "runs/r2" in (other.details() or "")
    # an RPC acting on no single resource is out of reach
    search = await _get(address, "SearchRuns", "r1", limited)
    assert search is not None and search.code() == grpc.StatusCode.PERMISSION_DENIED
    # unlimited tokens are not held to resources
    free = signer.sign(Principal("ci", "user"))
    assert await _get(address, "GetRun", "r2", free) is None
    assert await _get(address, "SearchRuns", "", free) is None


def test_resources_are_declared_for_the_rpcs_that_act_on_one() -> None:
    declared = service_resources(TRACKER)
    assert declared[f"/{TRACKER}/GetRun"].of(tracker_pb2.GetRunRequest(id="a")) == "runs/a"
    update = tracker_pb2.UpdateRunRequest(run=tracker_pb2.Run(id="b"))
    assert declared[f"/{TRACKER}/UpdateRun"].of(update) == "runs/b"
    assert f"/{TRACKER}/SearchRuns" not in declared
    assert {"runs", "experiments", "jobs"} <= collections()


def test_a_malformed_resource_template_is_refused() -> None:
    request = tracker_pb2.GetRunRequest.DESCRIPTOR
    for template in ("runs/{nope}", "runs/id", "{id}", "runs/{id}/x"):
        with pytest.raises(ValueError):
            Resource.parse(template, request, "test")
    assert Resource.parse("runs/{id}", request, "test") == Resource("runs", ("id",))


def test_resources_travel_in_the_token() -> None:
    signer, verifier = pair()
    limited = Principal("ci", "user", "k", ("runs/a", "jobs/b"))
    assert verifier.verify(signer.sign(limited)) == limited
