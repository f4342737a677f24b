"""NEURAL_REPLICA_HOST: where the controller's replicas listen, and the address Envoy's cluster
file and the deployer server use for them."""

from __future__ import annotations

import pytest

from services.deployer.controller.envoy import Locality, cluster
from services.deployer.replica_host import (
    ReplicaHostError,
    listen_host,
    replica_host,
    resolved,
)

pytestmark = pytest.mark.unit


def test_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_REPLICA_HOST", raising=False)
    assert replica_host() == "127.0.0.1"
    monkeypatch.setenv("NEURAL_REPLICA_HOST", "  ")
    assert replica_host() == "127.0.0.1"
    monkeypatch.setenv("NEURAL_REPLICA_HOST", "deployer-controller")
    assert replica_host() == "deployer-controller"


@pytest.mark.parametrize(
    "host,bound",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.2", "127.0.0.1"),
        ("localhost", "127.0.0.1"),
        ("::1", "127.0.0.1"),
        ("10.1.2.3", "0.0.0.0"),
        ("deployer-controller", "0.0.0.0"),
    ],
)
def test_replicas_leave_loopback_only_when_reached_from_elsewhere(host: str, bound: str) -> None:
    assert listen_host(host) == bound


def test_envoy_gets_an_address_never_a_name() -> None:
    assert resolved("10.1.2.3") == "10.1.2.3"
    assert resolved("localhost") == "127.0.0.1"
    with pytest.raises(ReplicaHostError, match="NEURAL_REPLICA_HOST"):
        resolved("no-such-host.invalid")


def test_the_cluster_lists_the_replicas_at_the_given_address() -> None:
    c = cluster("iris", [Locality("v1", 100, [5001, 5002])], "10.1.2.3")
    endpoints = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "10.1.2.3", "port_value": 5001},
        {"address": "10.1.2.3", "port_value": 5002},
    ]
