"""The authz service's internal token: EdDSA-signed, short-lived, checked by every service
with the public key alone; and a service reached directly refuses a forged one."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from neural.v1 import compiler_pb2
from service_kit.auth import Principal
from service_kit.interceptors import Interceptor
from service_kit.internal_token import (
    HEADER,
    Signer,
    Verifier,
    load_private_key,
    load_public_keys,
)
from service_kit.roles import service_roles

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


@pytest.fixture
async def compiler_address() -> AsyncIterator[tuple[str, Signer]]:
    """The kit's interceptor in front of Validate (viewer) and Compile (user), with the
    public key of one authz keypair, as every service runs it."""
    signer, verifier = pair()
    roles = service_roles(COMPILER)
    server = grpc.aio.server(interceptors=[Interceptor("compiler", None, roles, tokens=verifier)])
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _validate,
            request_deserializer=compiler_pb2.ValidateRequest.FromString,
            response_serializer=compiler_pb2.ValidateResponse.SerializeToString,
        )
        for name in ("Validate", "Compile")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(COMPILER, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", signer
    finally:
        await server.stop(None)


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


async def test_a_service_without_the_public_key_refuses_every_internal_token() -> None:
    signer, _ = pair()
    server = grpc.aio.server(interceptors=[Interceptor("compiler", None, {})])
    handlers = {
        "Validate": grpc.unary_unary_rpc_method_handler(
            _validate,
            request_deserializer=compiler_pb2.ValidateRequest.FromString,
            response_serializer=compiler_pb2.ValidateResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(COMPILER, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        token = signer.sign(Principal("alice", "admin"))
        code = await _call(f"127.0.0.1:{port}", "Validate", ((HEADER, token),))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(None)
