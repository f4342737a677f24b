"""What Check reuses between requests, and what it never does: a principal's signed internal
token (the same principal only, signed anew past half its life), and one key lookup for the
requests in flight with the same credential; every request is still decided and audited."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy.service.auth.v3 import external_auth_pb2
from service_kit.auth import Principal
from service_kit.internal_token import HEADER, TTL_SECONDS, Signer, Verifier

from gateway.authz.check import Answers, Authorizer
from gateway.authz.store import Grant

pytestmark = pytest.mark.unit

ALICE = Principal("alice", "user", "key-1")
KEY = "nk_" + "a" * 43
VALIDATE = ("POST", "/neural.v1.CompilerService/Validate")


class Clock:
    # Starts in the past, so the tokens signed as the test moves it on are valid now.
    def __init__(self) -> None:
        self.now = time.time() - TTL_SECONDS * 2 / 3

    def __call__(self) -> float:
        return self.now


def token_of(answer: external_auth_pb2.CheckResponse) -> str:
    return next(h.header.value for h in answer.ok_response.headers if h.header.key == HEADER)


def pair() -> tuple[Signer, Verifier]:
    key = Ed25519PrivateKey.generate()
    return Signer(key), Verifier([key.public_key()])


def test_a_principal_gets_its_token_again_until_half_its_life_is_gone() -> None:
    signer, verifier = pair()
    clock = Clock()
    answers = Answers(clock)
    first = answers.allowed(ALICE, signer)
    assert verifier.verify(token_of(first)) == ALICE
    clock.now += TTL_SECONDS / 2 - 1
    assert answers.allowed(ALICE, signer) is first
    clock.now += 1  # half the token's life is gone: a fresh one
    second = answers.allowed(ALICE, signer)
    assert token_of(second) != token_of(first)
    assert verifier.verify(token_of(second)) == ALICE


@pytest.mark.parametrize(
    "other",
    [
        Principal("bob", "user", "key-1"),
        Principal("alice", "admin", "key-1"),
        Principal("alice", "user", "key-2"),
        Principal("alice", "user", "key-1", ("runs/r1",)),
    ],
)
def test_a_token_is_never_handed_to_another_principal(other: Principal) -> None:
    signer, verifier = pair()
    answers = Answers(Clock())
    mine = token_of(answers.allowed(ALICE, signer))
    theirs = token_of(answers.allowed(other, signer))
    assert theirs != mine
    assert verifier.verify(theirs) == other
    assert verifier.verify(token_of(answers.allowed(ALICE, signer))) == ALICE


def test_another_signer_signs_anew() -> None:
    (old, _), (new, verifier) = pair(), pair()
    answers = Answers(Clock())
    answers.allowed(ALICE, old)
    assert verifier.verify(token_of(answers.allowed(ALICE, new))) == ALICE


@dataclass
class Keys:
    """A key store whose lookups wait until released, counting them."""

    grants: dict[str, Grant | None]
    lookups: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    fail: bool = False

    async def authenticate(self, key: str) -> Grant | None:
        self.lookups += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("database gone")
        return self.grants.get(key)


@dataclass
class Audit:
    events: list[tuple[str, bool]] = field(default_factory=list)

    def record(
        self, subject: str, action: str, allowed: bool, reason: str = "", target: str = ""
    ) -> None:
        self.events.append((subject, allowed))


def authorizer(keys: Keys, audit: Audit) -> Authorizer:
    signer, _ = pair()
    return Authorizer(keys, None, signer, audit)  # type: ignore[arg-type]


def request(key: str) -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path = VALIDATE
    http.headers["authorization"] = f"Bearer {key}"
    http.headers["content-type"] = "application/grpc"
    return req


async def until(condition: object, what: str) -> None:
    for _ in range(1000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError(what)


async def test_requests_in_flight_with_one_key_share_one_lookup_and_are_each_audited() -> None:
    keys, audit = Keys({KEY: Grant(ALICE)}), Audit()
    authz = authorizer(keys, audit)
    checks = [asyncio.create_task(authz.check(request(KEY))) for _ in range(5)]
    await until(lambda: keys.lookups == 1 and len(authz._lookups) == 1, "one lookup started")
    keys.release.set()
    answers = await asyncio.gather(*checks)
    assert keys.lookups == 1
    assert all(a.HasField("ok_response") for a in answers)
    assert audit.events == [("alice", True)] * 5
    # Done: the next request asks the store again (which caches for at most a second).
    await authz.check(request(KEY))
    assert keys.lookups == 2 and not authz._lookups


async def test_a_revoked_key_is_refused_though_its_answer_was_reused() -> None:
    keys, audit = Keys({KEY: Grant(ALICE)}), Audit()
    keys.release.set()
    authz = authorizer(keys, audit)
    assert (await authz.check(request(KEY))).HasField("ok_response")
    keys.grants[KEY] = None  # revoked
    refused = await authz.check(request(KEY))
    assert refused.HasField("denied_response")
    assert refused.denied_response.status.code == 401
    assert audit.events == [("alice", True), ("", False)]


async def test_a_failed_lookup_lets_the_waiting_requests_look_up_for_themselves() -> None:
    keys, audit = Keys({KEY: Grant(ALICE)}, fail=True), Audit()
    authz = authorizer(keys, audit)
    first = asyncio.create_task(authz.check(request(KEY)))
    await until(lambda: keys.lookups == 1, "the first lookup started")
    second = asyncio.create_task(authz.check(request(KEY)))
    await until(lambda: len(authz._lookups) == 1 and not second.done(), "the second waits")
    keys.release.set()
    with pytest.raises(ConnectionError):
        await first
    keys.fail = False
    assert (await second).HasField("ok_response")
    assert keys.lookups == 2
