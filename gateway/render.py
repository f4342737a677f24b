"""Envoy's configuration for one place it runs: `python -m gateway.render --target T -o FILE`.

gateway/envoy.yaml is the one source of truth; the targets differ only in the addresses filled
into its `${...}` placeholders (and the rate limiter's failure mode, a setting):

- `local` (`make run`, the tests): 127.0.0.1, each upstream at NEURAL_<NAME>_ADDRESS, else at
  127.0.0.1:NEURAL_<NAME>_PORT, else at its default port; the gateway on
  127.0.0.1:NEURAL_GATEWAY_PORT (8080), its admin interface on NEURAL_GATEWAY_ADMIN_PORT (9901);
  the deployments' cluster file in NEURAL_ENVOY_DYNAMIC_DIR (<NEURAL_DATA_DIR>/envoy-dynamic),
  made with no clusters when absent.
- `compose`: every upstream by its docker compose service name, at its default port.
- `kubernetes`: every upstream by its Service's cluster DNS name in `--namespace`.
In both, the deployments' cluster file is in NEURAL_ENVOY_DYNAMIC_DIR, by default
/var/run/neural/envoy-dynamic, a volume the deployer's controller shares.

The documentation's routes (/openapi.json, /docs) and the web console's (`/`, `/index.html`,
`/assets/...`), files Envoy answers itself, come from gateway.docs and gateway.console and are
put first in the route table. File paths in the result are relative to the repository root,
where Envoy runs (the image's working directory in a container); the console's files are
listed from web/dist at rendering, so a new build is served from the next `make run`.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from service_kit.settings import DEFAULT_PORTS

from gateway import console, docs, static_routes

TEMPLATE = Path(__file__).resolve().parent / "envoy.yaml"
TARGETS = ("local", "compose", "kubernetes")
# The clusters of envoy.yaml, each a gRPC server.
UPSTREAMS = ("compiler", "trainer", "tracker", "deployer", "authz", "ratelimit")
GATEWAY_PORT = 8080
ADMIN_PORT = 9901
DEFAULT_NAMESPACE = "neural"
CONTAINER_DYNAMIC_DIR = "/var/run/neural/envoy-dynamic"
EMPTY_CLUSTERS = "version_info: '0'\nresources: []\n"
# Relative to the repository root, where Envoy runs.
DOCS_DIR = Path("gateway/docs")
OPENAPI_FILE = Path("gateway/openapi.json")


class RenderError(ValueError):
    """A setting the gateway's configuration cannot be built from."""


def _split(address: str, name: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RenderError(f"NEURAL_{name.upper()}_ADDRESS must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def _port(env: Mapping[str, str], variable: str, default: int) -> int:
    raw = env.get(variable) or str(default)
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise RenderError(f"{variable} must be a port number, got {raw!r}")
    return int(raw)


def _fail_open(env: Mapping[str, str]) -> bool:
    # the same setting, and default, as the rate-limit service's own
    raw = env.get("NEURAL_RATELIMIT_FAIL_OPEN") or "1"
    if raw not in ("0", "1"):
        raise RenderError(f"NEURAL_RATELIMIT_FAIL_OPEN must be 1 or 0, got {raw!r}")
    return raw == "1"


def values(
    target: str, env: Mapping[str, str], namespace: str = DEFAULT_NAMESPACE
) -> dict[str, str]:
    """The placeholders' values for `target`."""
    if target not in TARGETS:
        raise RenderError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    result = {"RATELIMIT_FAILURE_MODE_DENY": "false" if _fail_open(env) else "true"}
    for name in UPSTREAMS:
        port = DEFAULT_PORTS[name]
        if target == "local":
            address = env.get(f"NEURAL_{name.upper()}_ADDRESS")
            if address:
                host, port = _split(address, name)
            else:
                host = "127.0.0.1"
                port = _port(env, f"NEURAL_{name.upper()}_PORT", port)
        elif target == "compose":
            host = name
        else:
            host = f"{name}.{namespace}.svc.cluster.local"
        result[f"{name.upper()}_HOST"] = host
        result[f"{name.upper()}_PORT"] = str(port)
    if target == "local":
        result["GATEWAY_HOST"] = "127.0.0.1"
        result["GATEWAY_PORT"] = str(_port(env, "NEURAL_GATEWAY_PORT", GATEWAY_PORT))
        result["ADMIN_PORT"] = str(_port(env, "NEURAL_GATEWAY_ADMIN_PORT", ADMIN_PORT))
        result["DYNAMIC_DIR"] = str(dynamic_dir(env))
    else:  # the container's port, published or fronted by a Service
        result["GATEWAY_HOST"] = "0.0.0.0"  # the container's only door
        result["GATEWAY_PORT"] = str(GATEWAY_PORT)
        result["ADMIN_PORT"] = str(ADMIN_PORT)
        result["DYNAMIC_DIR"] = env.get("NEURAL_ENVOY_DYNAMIC_DIR") or CONTAINER_DYNAMIC_DIR
    return result


def dynamic_dir(env: Mapping[str, str]) -> Path:
    """Where the deployer's controller writes the deployments' clusters, on this machine."""
    configured = env.get("NEURAL_ENVOY_DYNAMIC_DIR")
    if configured:
        return Path(configured).resolve()
    return (Path(env.get("NEURAL_DATA_DIR") or ".run") / "envoy-dynamic").resolve()


def ensure_dynamic_dir(folder: Path) -> None:
    """The folder and a cluster file with no clusters, unless the controller wrote one: Envoy
    does not start on a missing file."""
    folder.mkdir(parents=True, exist_ok=True)
    clusters = folder / "cds.yaml"
    if not clusters.exists():
        tmp = folder / ".cds.yaml.tmp"
        tmp.write_text(EMPTY_CLUSTERS)
        tmp.replace(clusters)


def render(
    target: str,
    env: Mapping[str, str],
    namespace: str = DEFAULT_NAMESPACE,
    console_dir: Path = console.DIST_DIR,
) -> str:
    """Envoy's configuration (YAML) for `target`; the console's files from `console_dir`."""
    try:
        text = string.Template(TEMPLATE.read_text()).substitute(values(target, env, namespace))
    except KeyError as e:  # a placeholder the template gained without a value here
        raise RenderError(f"envoy.yaml has a placeholder with no value: {e}") from None
    config: dict[str, Any] = yaml.safe_load(text)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    route_config = manager["typed_config"]["route_config"]
    cap = static_routes.MAX_DIRECT_RESPONSE_BODY_BYTES
    route_config["max_direct_response_body_size_bytes"] = cap
    host = route_config["virtual_hosts"][0]
    try:
        files = docs.routes(DOCS_DIR, OPENAPI_FILE) + console.routes(console_dir)
    except ValueError as e:  # a console file over Envoy's cap
        raise RenderError(str(e)) from None
    host["routes"] = files + host["routes"]
    return yaml.safe_dump(config, sort_keys=False, width=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render gateway/envoy.yaml for one target.")
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="kubernetes only")
    parser.add_argument("-o", "--output", type=Path, help="the file to write (default stdout)")
    args = parser.parse_args(argv)
    try:
        text = render(args.target, os.environ, args.namespace)
    except RenderError as e:
        print(f"gateway.render: {e}", file=sys.stderr)
        return 2
    if args.target == "local":
        ensure_dynamic_dir(dynamic_dir(os.environ))
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_name(f".{args.output.name}.tmp")
        tmp.write_text(text)
        tmp.replace(args.output)  # Envoy never reads a half-written file
    return 0


if __name__ == "__main__":
    sys.exit(main())
