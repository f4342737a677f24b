"""service_kit.healthcheck, the containers' gRPC health probe, against a real gRPC server in
this process with grpcio's health servicer: 0 only for SERVING, 1 with one line otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from service_kit import healthcheck

from tests.conftest import ROOT

Status = health_pb2.HealthCheckResponse


@pytest.fixture
def server() -> Iterator[tuple[str, health.HealthServicer]]:
    """A gRPC server with the health service on a free loopback port, and its servicer."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(None)


def test_serving_exits_0(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    servicer.set("", Status.SERVING)
    assert healthcheck.main([address]) == 0
    assert capsys.readouterr().err == ""


def test_not_serving_exits_1_saying_so(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    servicer.set("", Status.NOT_SERVING)
    assert healthcheck.main([address]) == 1
    err = capsys.readouterr().err
    assert err == f"{address}: NOT_SERVING\n"


def test_a_named_service_is_asked_about(
    server: tuple[str, health.HealthServicer], capsys: pytest.CaptureFixture[str]
) -> None:
    address, servicer = server
    servicer.set("", Status.SERVING)
    servicer.set("neural.v1.TrackerService", Status.NOT_SERVING)
    assert healthcheck.main([address, "--service", "neural.v1.TrackerService"]) == 1
    assert capsys.readouterr().err == f"{address}: NOT_SERVING\n"
    servicer.set("neural.v1.TrackerService", Status.SERVING)
    assert healthcheck.main([address, "--service", "neural.v1.TrackerService"]) == 0
    # a service the server does not know: NOT_FOUND, one line
    assert healthcheck.main([address, "--service", "neural.v1.Nothing"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{address}: NOT_FOUND") and err.count("\n") == 1


def test_nothing_listening_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    assert healthcheck.main([address, "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{address}: UNAVAILABLE") and err.count("\n") == 1


def test_the_module_runs_as_a_command(server: tuple[str, health.HealthServicer]) -> None:
    """What a compose healthcheck runs: `python -m service_kit.healthcheck HOST:PORT`."""
    address, servicer = server
    servicer.set("", Status.SERVING)

    def probe() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service_kit.healthcheck", address],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert probe().returncode == 0
    servicer.set("", Status.NOT_SERVING)
    done = probe()
    assert done.returncode == 1 and done.stderr == f"{address}: NOT_SERVING\n"
