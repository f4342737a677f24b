"""The gateway's own behaviour, seen from its upstreams: a real Envoy (the configuration
`make run` uses) in front of recording gRPC servers, so a test sees exactly which headers Envoy
forwards to ext_authz and to a service, what it retries, and what it refuses on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from tests.gateway.harness import Gateway, start_gateway
from tests.gateway.recorder import Recorder
from tests.gateway.rest_errors import gateway_grpc_reply, status_body

pytestmark = pytest.mark.e2e

FORGED = {
    "x-neural-principal": "forged.token.value",
    "x-neural-subject": "admin-impostor",
    "x-neural-role": "admin",
}
VALIDATE = "/neural.v1.CompilerService/Validate"
SERVICES = ("compiler", "trainer", "tracker", "deployer")


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    r = Recorder().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, recorder: Recorder) -> Iterator[Gateway]:
    upstreams = {name: recorder.address for name in (*SERVICES, "authz")}
    g = start_gateway(tmp_path_factory.mktemp("gateway"), upstreams)
    yield g
    g.stop()


def raw(channel: grpc.Channel, method: str):  # type: ignore[no-untyped-def]
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def test_forged_identity_headers_reach_neither_authz_nor_a_service(
    gateway: Gateway, recorder: Recorder
) -> None:
    before_calls, before_checks = len(recorder.calls_to(VALIDATE)), len(recorder.checks)
    r = httpx.post(
        f"{gateway.url}/v1/programs:validate",
        json={"source": "network N {}"},
        headers={**FORGED, "authorization": "Bearer some-key"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    with grpc.insecure_channel(gateway.address) as channel:
        metadata = (*FORGED.items(), ("authorization", "Bearer some-key"))
        raw(channel, VALIDATE)(b"", metadata=metadata, timeout=10)
    calls = recorder.calls_to(VALIDATE)[before_calls:]
    checks = recorder.checks[before_checks:]
    assert len(calls) == 2 and len(checks) == 2
    for headers in [c.metadata for c in calls] + checks:
        assert not {k for k in headers if k.startswith("x-neural-")}, headers
    # the credentials themselves do reach ext_authz: only identity headers are removed
    assert all(check.get("authorization") == "Bearer some-key" for check in checks)


def test_reads_are_retried_on_unavailable_and_writes_are_not(
    gateway: Gateway, recorder: Recorder
) -> None:
    read, write = "/neural.v1.CompilerService/GetModel", "/neural.v1.CompilerService/DeleteModel"
    recorder.fail_next(read, grpc.StatusCode.UNAVAILABLE)
    recorder.fail_next(write, grpc.StatusCode.UNAVAILABLE)
    with grpc.insecure_channel(gateway.address) as channel:
        raw(channel, read)(b"", timeout=10)  # answered by the retry
        with pytest.raises(grpc.RpcError) as info:
            raw(channel, write)(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(recorder.calls_to(read)) == 2
    assert len(recorder.calls_to(write)) == 1
    # a caller's mistake is not retried either, read or not
    recorder.fail_next(read, grpc.StatusCode.NOT_FOUND)
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.RpcError):
        raw(channel, read)(b"", timeout=10)
    assert len(recorder.calls_to(read)) == 3


def test_unknown_paths_are_404_and_unimplemented(gateway: Gateway) -> None:
    for path in ("/v1/no-such-collection", "/no-such-thing"):
        r = httpx.get(f"{gateway.url}{path}", timeout=10)
        assert r.status_code == 404
        assert path in status_body(r, grpc.StatusCode.NOT_FOUND)["message"]
    with grpc.insecure_channel(gateway.address) as channel, pytest.raises(grpc.RpcError) as info:
        raw(channel, "/some.Unknown/Method")(b"", timeout=10)
    assert gateway_grpc_reply(info.value, grpc.StatusCode.UNIMPLEMENTED) == "no such path"


def test_a_rest_body_that_is_not_json_is_400_with_a_status(
    gateway: Gateway, recorder: Recorder
) -> None:
    before = len(recorder.calls_to(VALIDATE))
    r = httpx.post(
        f"{gateway.url}/v1/programs:validate",
        content=b'{"source": ',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400
    status_body(r, grpc.StatusCode.INVALID_ARGUMENT)  # the transcoder's words, as JSON
    assert len(recorder.calls_to(VALIDATE)) == before


def test_a_rest_body_over_the_limit_is_413(gateway: Gateway, recorder: Recorder) -> None:
    before = len(recorder.calls_to(VALIDATE))
    body = b'{"source": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    r = httpx.post(
        f"{gateway.url}/v1/programs:validate",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    status_body(r, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert len(recorder.calls_to(VALIDATE)) == before


def test_grpc_web_calls_reach_the_service_as_grpc(gateway: Gateway, recorder: Recorder) -> None:
    before = len(recorder.calls_to(VALIDATE))
    frame = b"\x00" + (0).to_bytes(4, "big")  # one uncompressed, empty message
    r = httpx.post(
        f"{gateway.url}{VALIDATE}",
        content=frame,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/grpc-web")
    # the message frame (empty), then the trailers frame (flag 0x80) carrying grpc-status: 0
    assert r.content[:5] == frame
    trailers = r.content[5:]
    assert trailers[0] == 0x80 and b"grpc-status:0" in trailers[5:]
    calls = recorder.calls_to(VALIDATE)[before:]
    assert len(calls) == 1  # a gRPC server answered it: it arrived as gRPC


def test_cors_preflight_is_answered_by_the_gateway(gateway: Gateway, recorder: Recorder) -> None:
    before = len(recorder.checks)
    r = httpx.options(
        f"{gateway.url}/v1/programs:validate",
        headers={
            "origin": "http://console.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
        timeout=10,
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://console.example"
    assert "authorization" in r.headers["access-control-allow-headers"]
    assert len(recorder.checks) == before  # no credentials asked for a preflight


def test_every_call_is_logged_as_json_and_passes_the_local_backstop(gateway: Gateway) -> None:
    before = gateway.stats("backstop").get("backstop.http_local_rate_limit.enabled", 0)
    httpx.post(f"{gateway.url}/v1/programs:validate", json={"source": ""}, timeout=10)

    def logged() -> list[dict]:
        return [e for e in gateway.access_log() if e.get("path") == "/v1/programs:validate"]

    deadline = time.monotonic() + 10  # Envoy flushes its access log within a second
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    entry = logged()[-1]
    assert entry["method"] == "POST" and entry["rpc"] == VALIDATE
    assert entry["status"] == 200 and entry["upstream"] == "compiler"
    assert gateway.stats("backstop")["backstop.http_local_rate_limit.enabled"] > before


def test_authz_down_or_slow_is_no_entry(tmp_path: Path) -> None:
    """ext_authz fails closed: no answer within 0.5 s, or no authz at all, is 503 (UNAVAILABLE
    for gRPC) and the service is never called; public paths still answer."""
    service = Recorder().start()
    slow = Recorder(check_delay_s=3).start()
    down = start_gateway(tmp_path / "down", {"compiler": service.address})
    late = start_gateway(tmp_path / "late", {"compiler": service.address, "authz": slow.address})
    try:
        for g in (down, late):
            started = time.monotonic()
            r = httpx.post(f"{g.url}/v1/programs:validate", json={"source": ""}, timeout=10)
            assert r.status_code == 503, r.text
            assert time.monotonic() - started < 2.5
            message = status_body(r, grpc.StatusCode.UNAVAILABLE)["message"]
            assert "authorization service" in message
            with grpc.insecure_channel(g.address) as ch, pytest.raises(grpc.RpcError) as info:
                raw(ch, VALIDATE)(b"", timeout=10)
            details = gateway_grpc_reply(info.value, grpc.StatusCode.UNAVAILABLE)
            assert "authorization service" in details and "retry later" in details, details
            assert httpx.get(f"{g.url}/openapi.json", timeout=10).status_code == 200
        assert service.calls_to(VALIDATE) == []
        assert len(slow.checks) == 2
    finally:
        down.stop()
        late.stop()
        service.stop()
        slow.stop()


def test_rate_limit_service_down_failing_closed_is_unavailable(tmp_path: Path) -> None:
    """With NEURAL_RATELIMIT_FAIL_OPEN=0 a decision the rate-limit service cannot make is no
    entry: 503 with a Status for REST, UNAVAILABLE for gRPC; the service is never called."""
    service = Recorder().start()
    closed = start_gateway(
        tmp_path,
        {"compiler": service.address, "authz": service.address},
        {"NEURAL_RATELIMIT_FAIL_OPEN": "0"},
    )
    try:
        r = httpx.post(f"{closed.url}/v1/programs:validate", json={"source": ""}, timeout=10)
        assert r.status_code == 503, r.text
        assert "rate-limit service" in status_body(r, grpc.StatusCode.UNAVAILABLE)["message"]
        with grpc.insecure_channel(closed.address) as ch, pytest.raises(grpc.RpcError) as info:
            raw(ch, VALIDATE)(b"", timeout=10)
        details = gateway_grpc_reply(info.value, grpc.StatusCode.UNAVAILABLE)
        assert "rate-limit service" in details, details
        assert service.calls_to(VALIDATE) == []
    finally:
        closed.stop()
        service.stop()
