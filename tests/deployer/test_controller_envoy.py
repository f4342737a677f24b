"""The controller's Envoy cluster file: the shape DEPLOYER.md fixes, written atomically only
when it changes under a growing version, and accepted by the real Envoy, both as clusters of a
configuration and as a file-based CDS subscription that a live Envoy follows."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import proxy
from services.deployer.controller.envoy import ClusterFile, Locality, cluster
from tests.services.conftest import free_port


def test_cluster_lists_ready_ports_per_version_weighted_by_traffic() -> None:
    c = cluster("iris", [Locality("v1", 80, [5002, 5001]), Locality("v2", 20, [5003])])
    assert c["name"] == "deployment.iris" and c["type"] == "STATIC"
    assert c["load_assignment"]["cluster_name"] == "deployment.iris"
    [v1, v2] = c["load_assignment"]["endpoints"]
    assert (v1["locality"], v1["load_balancing_weight"]) == ({"sub_zone": "v1"}, 80)
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in v1["lb_endpoints"]]
    assert ports == [5001, 5002]
    assert (v2["locality"], v2["load_balancing_weight"]) == ({"sub_zone": "v2"}, 20)
    assert c["health_checks"][0]["grpc_health_check"] == {}


def test_versions_without_traffic_or_ready_replicas_are_left_out() -> None:
    c = cluster("iris", [Locality("v1", 100, []), Locality("v2", 0, [5003])])
    assert c["load_assignment"]["endpoints"] == []


def test_written_atomically_only_on_change_with_growing_versions(tmp_path: Path) -> None:
    f = ClusterFile(tmp_path / "dyn")
    assert f.write([cluster("a", [Locality("v1", 100, [5001])])])
    first = yaml.safe_load(f.path.read_text())
    assert isinstance(first["version_info"], str)
    assert first["resources"][0]["@type"].endswith("envoy.config.cluster.v3.Cluster")
    assert not f.write([cluster("a", [Locality("v1", 100, [5001])])])  # unchanged
    assert f.write([cluster("b", []), cluster("a", [Locality("v1", 100, [5001, 5002])])])
    second = yaml.safe_load(f.path.read_text())
    assert int(second["version_info"]) > int(first["version_info"])
    assert [r["name"] for r in second["resources"]] == ["deployment.a", "deployment.b"]
    assert sorted(p.name for p in f.path.parent.iterdir()) == ["cds.yaml"]  # no temp left
    # a controller started later still writes a higher version
    again = ClusterFile(tmp_path / "dyn")
    assert again.write([])
    assert int(yaml.safe_load(again.path.read_text())["version_info"]) > int(second["version_info"])


def _admin(port: int) -> dict[str, Any]:
    return {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}


def test_envoy_accepts_the_clusters(tmp_path: Path) -> None:
    f = ClusterFile(tmp_path)
    f.write(
        [
            cluster("iris", [Locality("v1", 80, [5001, 5002]), Locality("v2", 20, [5003])]),
            cluster("empty", []),
        ]
    )
    clusters = yaml.safe_load(f.path.read_text())["resources"]
    for c in clusters:
        c.pop("@type")
    config = tmp_path / "static.yaml"
    config.write_text(
        yaml.safe_dump({"admin": _admin(0), "static_resources": {"clusters": clusters}})
    )
    result = proxy.validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def _clusters(admin: int) -> dict[str, list[int]]:
    url = f"http://127.0.0.1:{admin}/clusters?format=json"
    with urllib.request.urlopen(url, timeout=2) as r:
        body = json.load(r)
    out = {}
    for c in body.get("cluster_statuses", []):
        if c["name"].startswith("deployment."):
            hosts = c.get("host_statuses", [])
            out[c["name"]] = sorted(h["address"]["socket_address"]["port_value"] for h in hosts)
    return out


def _wait(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("condition not met")


@pytest.mark.e2e
def test_a_live_envoy_follows_the_file(tmp_path: Path) -> None:
    dyn = tmp_path / "envoy-dynamic"
    f = ClusterFile(dyn)
    f.write([cluster("iris", [Locality("v1", 100, [5001])])])
    admin = free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "node": {"id": "test", "cluster": "test"},
                "admin": _admin(admin),
                "dynamic_resources": {
                    "cds_config": {
                        "resource_api_version": "V3",
                        "path_config_source": {
                            "path": str(f.path),
                            "watched_directory": {"path": str(dyn)},
                        },
                    }
                },
            }
        )
    )
    log = (tmp_path / "envoy.log").open("w")
    envoy = subprocess.Popen(proxy.command(config), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _clusters(admin) == {"deployment.iris": [5001]})
        f.write(
            [
                cluster("iris", [Locality("v1", 90, [5001, 5002]), Locality("v2", 10, [5003])]),
                cluster("other", []),
            ]
        )
        want = {"deployment.iris": [5001, 5002, 5003], "deployment.other": []}
        _wait(lambda: _clusters(admin) == want)
        f.write([])
        _wait(lambda: _clusters(admin) == {})
    finally:
        envoy.terminate()
        envoy.wait(30)
        log.close()
