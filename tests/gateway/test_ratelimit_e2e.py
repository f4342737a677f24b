"""`python -m gateway.ratelimit` as a real process, called over gRPC as Envoy calls it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
import redis
import yaml
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ROOT
from tests.services.conftest import free_port, redis_url
from tests.waiting import until

pytestmark = pytest.mark.e2e

Code = rls_pb2.RateLimitResponse.Code
REDIS_DB = 13
LIMITS = {
    "roles": {"user": {"requests": 3, "window_seconds": 60}},
    "default_role": "user",
    "anonymous": {"requests": 2, "window_seconds": 60},
    "costs": [{"name": "compile", "paths": ["/v1/models:compile"], "cost": 2}],
}


class Server:
    def __init__(self, tmp: Path, redis: str, fail_open: bool, limits: dict | None = None) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        config = tmp / f"limits-{self.port}.yaml"
        config.write_text(yaml.safe_dump(limits or LIMITS))
        self.log = tmp / f"ratelimit-{self.port}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "NEURAL_RATELIMIT_PORT": str(self.port),
            "NEURAL_RATELIMIT_METRICS_PORT": str(self.metrics_port),
            "NEURAL_RATELIMIT_CONFIG": str(config),
            "NEURAL_RATELIMIT_FAIL_OPEN": "1" if fail_open else "0",
            "NEURAL_REDIS_URL": redis,
            "NEURAL_GRACE_SECONDS": "2",
            # A busy test machine must not turn a slow Redis answer into a failure.
            "NEURAL_RATELIMIT_REDIS_TIMEOUT_MS": "5000",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.ratelimit"],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def status(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError("the service exited:\n" + self.log.read_text())
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return None

    def wait_status(self, status: int) -> None:
        until(lambda: self.status() == status, 30, f"health {status}:\n{self.log.read_text()}")

    def stop(self) -> int:
        self.channel.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    redis.Redis.from_url(redis_url(REDIS_DB)).flushdb()
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def ask(server: Server, **entries: str) -> rls_pb2.RateLimitResponse:
    req = rls_pb2.RateLimitRequest(domain="neural")
    d = req.descriptors.add()
    for key, value in entries.items():
        d.entries.add(key=key, value=value)
    return server.stub.ShouldRateLimit(req, timeout=5)


def test_should_rate_limit_over_grpc(servers: list[Server], tmp_path: Path) -> None:
    server = Server(tmp_path, redis_url(REDIS_DB), fail_open=True)
    servers.append(server)
    server.wait_status(SERVING)
    who = uuid.uuid4().hex
    answers = [
        ask(server, subject=who, role="user", path="/v1/programs:validate") for _ in range(4)
    ]
    assert [a.overall_code for a in answers] == [Code.OK] * 3 + [Code.OVER_LIMIT]
    assert [a.statuses[0].limit_remaining for a in answers] == [2, 1, 0, 0]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 3
    assert answers[-1].statuses[0].duration_until_reset.seconds > 0
    assert answers[-1].response_headers_to_add[0].key == "retry-after"

    # An unauthenticated REST Compile costs 2 of its address's 2.
    anonymous = ask(server, remote_address="192.0.2.1", path="/v1/models:compile")
    assert anonymous.overall_code == Code.OK
    assert anonymous.statuses[0].limit_remaining == 0

    # A domain this service does not serve is the caller's mistake, named.
    with pytest.raises(grpc.RpcError) as caught:
        server.stub.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="other"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "domain 'other'" in (caught.value.details() or "")

    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    assert 'neural_ratelimit_decisions_total{outcome="refused"} 1.0' in metrics
    assert "neural_ratelimit_redis_up 1.0" in metrics
    assert server.stop() == 0


def test_eight_clients_on_two_replicas_never_exceed_the_limit_in_total(
    servers: list[Server], tmp_path: Path
) -> None:
    limits = {**LIMITS, "roles": {"user": {"requests": 40, "window_seconds": 60}}}
    replicas = [Server(tmp_path, redis_url(REDIS_DB), True, limits) for _ in range(2)]
    servers += replicas
    for replica in replicas:
        replica.wait_status(SERVING)
    who = uuid.uuid4().hex
    start = threading.Barrier(8)

    def client(n: int) -> list[int]:
        # Each client its own connection, as Envoy's workers would have.
        with grpc.insecure_channel(f"127.0.0.1:{replicas[n % 2].port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            req = rls_pb2.RateLimitRequest(domain="neural")
            req.descriptors.add().entries.add(key="subject", value=who)
            start.wait()
            return [stub.ShouldRateLimit(req, timeout=5).overall_code for _ in range(15)]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for result in pool.map(client, range(8)) for c in result]
    assert len(codes) == 120
    assert codes.count(Code.OK) == 40
    assert codes.count(Code.OVER_LIMIT) == 80


def test_without_redis_health_says_whether_it_fails_open_or_closed(
    servers: list[Server], tmp_path: Path
) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    closed = Server(tmp_path, down, fail_open=False)
    opened = Server(tmp_path, down, fail_open=True)
    servers += [closed, opened]

    closed.wait_status(NOT_SERVING)
    with pytest.raises(grpc.RpcError) as caught:
        ask(closed, subject="alice", role="user")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    opened.wait_status(SERVING)
    assert ask(opened, subject="alice", role="user").overall_code == Code.OK
    until(lambda: "Redis unreachable" in opened.log.read_text(), 10, "the degradation logged")
    metrics = httpx.get(f"http://127.0.0.1:{opened.metrics_port}/metrics").text
    assert "neural_ratelimit_redis_up 0.0" in metrics
    assert 'neural_ratelimit_decisions_total{outcome="failed_open"} 1.0' in metrics


def test_a_bad_limits_file_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    server = Server(tmp_path, redis_url(REDIS_DB), True, {**LIMITS, "anonymous": {"requests": 1}})
    try:
        assert server.proc.wait(30) != 0
    finally:
        server.channel.close()
    out = server.log.read_text()
    assert "costs[0].cost: compile costs 2, more than anonymous admits in a window (1)" in out
    assert "Traceback" not in out
