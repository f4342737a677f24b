"""A service as a group of server processes on one port (NEURAL_<SERVICE>_PROCESSES).

A Python server is one core's worth of CPU: the tracker answers its hot reads on one core and
leaves the others idle. Here a parent starts N copies of the service's own command line, each
a complete server that binds the same host:port with SO_REUSEPORT (the kernel spreads new
connections over them); the parent serves nothing itself. It:

- refuses to start on a port something already listens on (its probe binds without
  SO_REUSEPORT), so a second stack on a used port fails loudly, as a single process does; it
  resolves port 0 to one port for every child;
- migrates the service's tables once, before the children start (they only check that the
  schema is at head): two processes migrating one SQLite file at once could both find it
  empty, and on PostgreSQL one migration beats N waits for an advisory lock;
- serves the group's Prometheus metrics on the one metrics port: the children write theirs
  into a private folder (prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR,
  made here and removed at exit), which the parent reads at each scrape;
- forwards SIGTERM and SIGINT to the children and waits for them to drain (grace_seconds,
  then SIGKILL), and exits 0 when they all stopped well;
- when a child dies on its own (a crash, an out-of-memory kill), stops the others (drained)
  and exits 1. It does not restart the child itself: the supervisor above it (Kubernetes,
  Compose's restart policy, scripts/run_stack.py) already restarts a failed process with a
  backoff and counts the restarts where an operator sees them; a parent that quietly
  restarted children would hide a crash loop from it, and a group short of a child would
  serve on with part of its capacity while its health said SERVING.

Each child asks the kernel for SIGTERM should the parent die (PR_SET_PDEATHSIG): a parent
killed outright does not leave servers behind on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .settings import Settings

log = logging.getLogger("neural.group")

# Set by the parent in each child's environment: the child's index, and the parent's pid.
CHILD = "SERVICE_KIT_GROUP_CHILD"
PARENT = "SERVICE_KIT_GROUP_PARENT"
POLL_S = 0.1
KILL_AFTER_S = 5.0  # beyond grace_seconds, for a child that does not stop when asked
PR_SET_PDEATHSIG = 1


def child_index() -> int | None:
    """This process's index in its group; None outside a group."""
    raw = os.environ.get(CHILD)
    return int(raw) if raw else None


def adopted() -> None:
    """In a child, at start: SIGTERM when the parent dies (Linux), and an exit now if it
    already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = os.environ.get(PARENT)
    if parent and os.getppid() != int(parent):
        log.error("the process group's parent is gone: not starting")
        sys.exit(1)


def claim_port(host: str, port: int) -> int:
    """The port the group will serve on (port 0: a free one), or OSError when something
    listens there already. The probe binds without SO_REUSEPORT: a listener with it (another
    group) or without it (a single server) makes the bind fail."""
    address = host.strip("[]") or None
    family, _, _, _, where = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind(where)
        return int(probe.getsockname()[1])


class Group:
    def __init__(self, name: str, settings: Settings, argv: list[str]) -> None:
        self.name = name
        self.settings = settings
        self.argv = argv
        self.children: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.metrics_dir = ""

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("stopping the process group", extra={"fields": {"signal": signum}})
        self.stopping = True
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)

    def _env(self, port: int, index: int) -> dict[str, str]:
        prefix = f"NEURAL_{self.name.upper()}"
        return {
            **os.environ,
            CHILD: str(index),
            PARENT: str(os.getpid()),
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            f"{prefix}_PORT": str(port),
            f"{prefix}_METRICS_PORT": "0",  # the parent serves the group's metrics
            "NEURAL_MIGRATE_AT_START": "0",  # the parent has migrated
        }

    def _serve_metrics(self) -> None:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.metrics_dir)
        start_http_server(self.settings.metrics_port, addr=self.settings.host, registry=registry)

    def _forget(self, child: subprocess.Popen[bytes]) -> None:
        """A child's live gauges leave the sums (multiprocess_mode "livesum")."""
        from prometheus_client.multiprocess import mark_process_dead

        with contextlib.suppress(OSError):
            mark_process_dead(child.pid, self.metrics_dir)

    def run(self, migrate: Callable[[Settings], Awaitable[None]] | None) -> int:
        settings = self.settings
        try:
            port = claim_port(settings.host, settings.port)
        except OSError as exc:
            log.error(
                "cannot serve on %s: %s (is another server running there?)",
                settings.address,
                exc,
            )
            return 1
        if migrate is not None and settings.migrate_at_start:
            asyncio.run(migrate(settings))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.metrics_dir = tempfile.mkdtemp(prefix=f"neural-{self.name}-metrics-")
        try:
            if settings.metrics_port:
                try:
                    self._serve_metrics()  # before any child: a used port stops nothing
                except OSError as exc:
                    log.error("cannot serve metrics on %s: %s", settings.metrics_port, exc)
                    return 1
            return self._supervise(port)
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _supervise(self, port: int) -> int:
        settings = self.settings
        for index in range(settings.processes):
            if self.stopping:
                break
            self.children.append(subprocess.Popen(self.argv, env=self._env(port, index)))
        log.info(
            "serving as a process group",
            extra={
                "fields": {
                    "address": f"{settings.host}:{port}",
                    "metrics_port": settings.metrics_port,
                    "processes": [c.pid for c in self.children],
                }
            },
        )
        failed = False
        while not self.stopping:
            for child in self.children:
                code = child.poll()
                if code is not None and not self.stopping:
                    log.error(
                        "a server process exited: stopping the group",
                        extra={"fields": {"child": child.pid, "status": code}},
                    )
                    self._forget(child)
                    failed = True
                    self._on_signal(signal.SIGTERM, None)
            time.sleep(POLL_S)
        deadline = time.monotonic() + settings.grace_seconds + KILL_AFTER_S
        for child in self.children:
            try:
                code = child.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "a server process did not stop: killed", extra={"fields": {"child": child.pid}}
                )
                child.kill()
                code = child.wait()
                failed = True
            self._forget(child)
            # a child stopped by the signal before its handlers were installed still stopped
            if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                failed = True
        log.info("process group stopped", extra={"fields": {"failed": failed}})
        return 1 if failed else 0


def run(
    name: str,
    settings: Settings,
    migrate: Callable[[Settings], Awaitable[None]] | None = None,
) -> int:
    """Serve `name` as settings.processes copies of this process's own command line; the
    exit status of the group (see the module's docstring)."""
    return Group(name, settings, [sys.executable, *sys.orig_argv[1:]]).run(migrate)


__all__ = ["CHILD", "adopted", "child_index", "claim_port", "run"]
