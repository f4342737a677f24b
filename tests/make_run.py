"""`make run`'s stack (scripts/run_stack.py) on free ports in a folder of its own, and an admin
key in it: what tests that act as a user (the CLI's, schemathesis') talk to, through the
gateway only."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.services.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("compiler", "trainer", "tracker", "deployer", "authz", "ratelimit")


@contextlib.contextmanager
def running_stack(folder: Path, settings: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The stack's environment (its gateway at 127.0.0.1:NEURAL_GATEWAY_PORT, its database)
    while it runs, `settings` added; stopped with Ctrl-C's signal afterwards."""
    env = {
        **os.environ,
        **(settings or {}),
        "NEURAL_DATA_DIR": str(folder),
        "NEURAL_LOCAL_REDIS_PORT": str(free_port()),
        "NEURAL_GATEWAY_PORT": str(free_port()),
        "NEURAL_GATEWAY_ADMIN_PORT": str(free_port()),
        "dramatiq_prom_port": str(free_port()),
        "TMPDIR": str(folder),
    }
    env.pop("NEURAL_REDIS_URL", None)
    env.pop("NEURAL_DATABASE_URL", None)
    for name in SERVICES:
        env[f"NEURAL_{name.upper()}_PORT"] = str(free_port())
        env[f"NEURAL_{name.upper()}_METRICS_PORT"] = str(free_port())
        env.pop(f"NEURAL_{name.upper()}_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_stack.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("Ctrl-C"):
                break
        assert process.poll() is None, "the stack did not start"
        env["NEURAL_DATABASE_URL"] = f"sqlite+aiosqlite:///{folder / 'neural.db'}"
        yield env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        if process.stdout is not None:
            process.stdout.read()
        process.wait(timeout=120)


def admin_key(env: dict[str, str], name: str = "cli") -> str:
    """A new admin key in the stack's authz table (`python -m gateway.authz.keys create`)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "create", "--name", name, "--role", "admin"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"\bnk_\S+", out.stdout)
    assert match, out.stdout
    return match.group(0)
