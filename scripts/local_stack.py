"""`make run`'s stack (scripts/run_stack.py) on free ports in a folder of its own, and keys in
it: what the browser tests, the CLI's and schemathesis' tests and bench/web.py talk to, through
the gateway only; and the one way to start and stop it (`make demo`'s own stack too)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("compiler", "trainer", "tracker", "deployer", "authz", "ratelimit")

_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, never the same one twice in a process: once the probe
    socket is closed the kernel may hand the same port to the next probe, and two servers of
    one stack were given one port (the second failed to bind while the first answered its
    health checks)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


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
    with stack_process(env) as process:
        if process.poll() is not None:
            raise RuntimeError(f"the stack did not start (see {folder}/*.log)")
        env["NEURAL_DATABASE_URL"] = f"sqlite+aiosqlite:///{folder / 'neural.db'}"
        yield env


@contextlib.contextmanager
def stack_process(
    env: dict[str, str], echo: Callable[[str], None] | None = None
) -> Iterator[subprocess.Popen[str]]:
    """scripts/run_stack.py started with `env`, once it has printed its addresses (each line
    handed to `echo`), or has exited (the caller checks `poll()`); stopped afterwards as
    Ctrl-C stops it, its output drained."""
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
            if echo is not None:
                echo(line.rstrip())
            if line.startswith("Ctrl-C"):
                break
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        if process.stdout is not None:
            process.stdout.read()  # the stack prints as it stops
        process.wait(timeout=120)


def create_key(env: dict[str, str], name: str, role: str) -> str:
    """A new key in the stack's authz table (`python -m gateway.authz.keys create`)."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "create", "--name", name, "--role", role],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"\bnk_\S+", out)
    if not match:
        raise RuntimeError(f"no key printed: {out}")
    return match.group(0)


def admin_key(env: dict[str, str], name: str = "cli") -> str:
    return create_key(env, name, "admin")
