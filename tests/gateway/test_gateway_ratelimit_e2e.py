"""Rate limiting through the gateway: a real Envoy asking the real rate-limit service, which
counts in real Redis, in front of the compiler, with the real authz service naming the caller.
A small limits file (5 calls in any 2 s per user) so the limit is reached, and left, quickly."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
import yaml
from neural.v1 import compiler_pb2, compiler_pb2_grpc

from tests.gateway.harness import Platform, start_platform
from tests.gateway.rest_errors import gateway_grpc_reply, status_body
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 14
SOURCE = "network N {\n  input: (4)\n  layers:\n    Dense(3)\n}\n"
SERVERS = {
    "compiler": "services.compiler",
    "authz": "gateway.authz",
    "ratelimit": "gateway.ratelimit",
}
LIMIT, WINDOW = 5, 2
# The crowd's window outlasts the test, so every call of the crowd falls in the one window.
CROWD_LIMIT, CROWD_WINDOW = 20, 600
LIMITS = {
    "domain": "neural",
    "window_seconds": WINDOW,
    "roles": {
        "user": {"requests": LIMIT},
        "viewer": {"requests": CROWD_LIMIT, "window_seconds": CROWD_WINDOW},
    },
    "default_role": "user",
    "anonymous": {"requests": LIMIT},
}
# One key (one subject, so one window) per test: no test spends another's calls.
KEYS = {"rest": "user", "grpc": "user", "slide": "user", "crowd": "viewer"}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("ratelimit-platform")
    limits = tmp / "limits.yaml"
    limits.write_text(yaml.safe_dump(LIMITS))
    env = {
        "NEURAL_RATELIMIT_CONFIG": str(limits),
        # Closed: a decision that fails is a 503 here, never a call admitted uncounted.
        "NEURAL_RATELIMIT_FAIL_OPEN": "0",
        # A busy test machine must not turn a slow Redis answer into a failed decision.
        "NEURAL_RATELIMIT_REDIS_TIMEOUT_MS": "5000",
    }
    with start_platform(tmp, SERVERS, REDIS_DB, KEYS, env) as running:
        yield running


def validate(client: httpx.Client, platform: Platform, key: str) -> httpx.Response:
    return client.post(
        f"{platform.gateway.url}/v1/programs:validate",
        json={"source": SOURCE},
        headers=platform.headers(key),
        timeout=30,
    )


def test_the_call_over_the_limit_is_429_with_the_rate_limit_headers(platform: Platform) -> None:
    with httpx.Client() as client:
        started = time.monotonic()
        answers = [validate(client, platform, "rest") for _ in range(LIMIT + 1)]
        assert time.monotonic() - started < WINDOW, "the calls did not fit in one window"
    assert [a.status_code for a in answers] == [200] * LIMIT + [429], answers[-1].text
    for answer in answers:
        # the limit first (`5`, or `5, 5;w=60` for a window with a unit Envoy names)
        assert answer.headers["x-ratelimit-limit"].split(",")[0] == str(LIMIT)
    remaining = [int(a.headers["x-ratelimit-remaining"]) for a in answers]
    assert remaining == [LIMIT - 1 - n for n in range(LIMIT)] + [0]
    refused = answers[-1]
    assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= WINDOW
    assert 1 <= int(refused.headers["retry-after"]) <= WINDOW
    # a google.rpc.Status, as every REST error (the limiter itself sends no body)
    assert "rate limit" in status_body(refused, grpc.StatusCode.RESOURCE_EXHAUSTED)["message"]


def test_the_call_over_the_limit_is_resource_exhausted_over_grpc(platform: Platform) -> None:
    request = compiler_pb2.ValidateRequest(source=SOURCE)
    with grpc.insecure_channel(platform.gateway.address) as channel:
        stub = compiler_pb2_grpc.CompilerServiceStub(channel)
        started = time.monotonic()
        for _ in range(LIMIT):
            reply, call = stub.Validate.with_call(
                request, metadata=platform.metadata("grpc"), timeout=30
            )
            assert reply.valid
        with pytest.raises(grpc.RpcError) as info:
            stub.Validate(request, metadata=platform.metadata("grpc"), timeout=30)
        assert time.monotonic() - started < WINDOW, "the calls did not fit in one window"
    gateway_grpc_reply(info.value, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # a refusal answers at once, in trailers only: the headers travel there
    refused = dict(info.value.trailing_metadata() or ())
    assert refused["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused["retry-after"]) <= WINDOW
    admitted = dict(call.initial_metadata())
    assert admitted["x-ratelimit-limit"].split(",")[0] == str(LIMIT)


def test_the_window_slides(platform: Platform) -> None:
    """A client calling steadily gets through again as its oldest calls leave the window, and
    never more than the limit in any window-long stretch of time."""
    admitted: list[tuple[float, float]] = []  # (sent, answered) per admitted call
    refused = 0

    def call(client: httpx.Client) -> bool:
        nonlocal refused
        sent = time.monotonic()
        answer = validate(client, platform, "slide")
        assert answer.status_code in (200, 429), answer.text
        if answer.status_code == 200:
            admitted.append((sent, time.monotonic()))
        else:
            refused += 1
        return len(admitted) > 2 * LIMIT

    with httpx.Client() as client:
        until(lambda: call(client), 3 * WINDOW + 30, "calls admitted over two windows")
    assert refused > 0
    # Redis decided each call between its sending and its answer: the call admitted LIMIT
    # after another was decided at least a window later.
    for first, later in zip(admitted, admitted[LIMIT:], strict=False):
        assert later[1] - first[0] >= WINDOW - 0.01, admitted


def test_eight_concurrent_clients_never_exceed_the_limit_in_total(platform: Platform) -> None:
    start = threading.Barrier(8)

    def client(n: int) -> list[int]:
        # each client its own connection, as separate programs would have
        with httpx.Client() as own:
            start.wait()
            return [validate(own, platform, "crowd").status_code for _ in range(10)]

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = [s for result in pool.map(client, range(8)) for s in result]
    assert time.monotonic() - started < CROWD_WINDOW
    assert len(statuses) == 80
    counted = Counter(statuses)
    assert counted == {200: CROWD_LIMIT, 429: 80 - CROWD_LIMIT}, counted
