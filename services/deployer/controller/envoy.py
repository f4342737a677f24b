"""Envoy's cluster file: `<dynamic dir>/cds.yaml`, a file-based CDS subscription.

One STATIC cluster `deployment.<name>` per deployment, one locality per serving version
weighted by its traffic percent, listing only READY replicas (none: a cluster with no
endpoints, which Envoy answers UNAVAILABLE). Envoy reloads the file when it is moved into
place, so it is written beside it and renamed: Envoy never reads half a file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = f"type.googleapis.com/{HTTP_OPTIONS}"
LOOPBACK = "127.0.0.1"


@dataclass
class Locality:
    """A serving version: its traffic weight and its READY replicas' ports."""

    version: str
    weight: int
    ports: list[int] = field(default_factory=list)


def cluster_name(deployment: str) -> str:
    return f"deployment.{deployment}"


def cluster(deployment: str, localities: list[Locality], host: str = LOOPBACK) -> dict[str, Any]:
    """The deployment's cluster; `host` is the replicas' IP address."""
    name = cluster_name(deployment)
    endpoints = [
        {
            "locality": {"sub_zone": loc.version},
            # Envoy refuses a weight of 0: a version with no traffic is left out
            "load_balancing_weight": loc.weight,
            "lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": p}}}}
                for p in sorted(loc.ports)
            ],
        }
        for loc in localities
        if loc.weight > 0 and loc.ports
    ]
    return {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": HTTP_OPTIONS_TYPE,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "common_lb_config": {"locality_weighted_lb_config": {}},
        # Predictions are retried on a reset or an unavailable replica (the route's policy):
        # Envoy's default of 3 retries at once per cluster would refuse most of them when a
        # replica dies under load.
        "circuit_breakers": {"thresholds": [{"max_retries": 1000}]},
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "2s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ],
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    }


class ClusterFile:
    """Writes the clusters when they change, each time under a higher `version_info`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "cds.yaml"
        # Monotonic across restarts of the controller too: milliseconds since the epoch at
        # start, then one more per write.
        self.version = int(time.time() * 1000)
        self.last: list[dict[str, Any]] | None = None

    def write(self, clusters: list[dict[str, Any]]) -> bool:
        """Write `clusters` unless they are what the file holds; True when written."""
        clusters = sorted(clusters, key=lambda c: c["name"])
        if clusters == self.last:
            return False
        self.version += 1
        doc = {"version_info": str(self.version), "resources": clusters}
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / ".cds.yaml.tmp"
        with tmp.open("w") as out:
            yaml.safe_dump(doc, out, sort_keys=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self.last = clusters
        return True
