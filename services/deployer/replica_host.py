"""Where the controller's model replicas listen and where they are reached.

NEURAL_REPLICA_HOST names the machine the controller runs its replicas on, as Envoy and the
deployer server reach it: 127.0.0.1 (the default) when all run on one machine, as in `make run`;
the controller's host name when it runs in a container of its own (compose:
`deployer-controller`). Off loopback, the replicas listen on every interface."""

from __future__ import annotations

import ipaddress
import os
import socket

LOOPBACK = "127.0.0.1"


class ReplicaHostError(ValueError):
    """NEURAL_REPLICA_HOST does not name a reachable host."""


def replica_host() -> str:
    """The host name or address the replicas are reached at (NEURAL_REPLICA_HOST)."""
    return os.environ.get("NEURAL_REPLICA_HOST", "").strip() or LOOPBACK


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_host(host: str) -> str:
    """What a replica binds: loopback alone unless others must reach it."""
    return LOOPBACK if _is_loopback(host) else "0.0.0.0"


def resolved(host: str) -> str:
    """The host's IPv4 address: Envoy's STATIC clusters take addresses, never names (a
    container's address holds for the controller's life, and its replicas die with it)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        raise ReplicaHostError(f"NEURAL_REPLICA_HOST {host!r} does not resolve: {e}") from None
    return str(found[0][4][0])
