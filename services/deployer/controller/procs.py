"""Replica processes: started so that they die with the controller, their port read from the
first line they print, their health asked over grpc.health.v1, stopped with a drain."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

PORT_TIMEOUT = 120.0  # seconds for a replica to load its model and listen
STOP_GRACE = 8.0  # the replica drains for 5 s on SIGTERM; then it is killed
BAD_MODEL = 3  # a replica's exit code when onnxruntime cannot load its model
PR_SET_PDEATHSIG = 1
REPLICA_MODULE = "services.deployer.replica"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the controller dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Proc:
    replica_id: str
    deployment_id: str
    version_id: str
    process: asyncio.subprocess.Process
    port: int = 0
    ready: bool = False
    port_saved: bool = False  # written to its row
    failures: int = 0  # health checks failed in a row
    stopping: bool = False
    started: float = field(default_factory=time.monotonic)
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    tasks: list[asyncio.Task] = field(default_factory=list)
    port_known: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exited(self) -> bool:
        return self.process.returncode is not None

    def reason(self) -> str:
        """The replica's last words (its stderr's last line): e.g. the loader's reason."""
        lines = [line for line in self.stderr if line.strip()]
        return lines[-1].strip() if lines else f"exit code {self.process.returncode}"


def replica_args(
    model: str,
    name: str,
    version: str,
    max_batch_size: int,
    max_batch_delay_us: int,
    threads: int = 1,
    host: str = "127.0.0.1",
) -> list[str]:
    return [
        sys.executable,
        "-m",
        REPLICA_MODULE,
        *("--model", model, "--model-name", name, "--model-version", version),
        *("--port", "0", "--host", host),
        *("--max-batch-size", str(max(max_batch_size, 1))),
        *("--max-batch-delay-us", str(max_batch_delay_us)),
        *("--threads", str(threads)),
    ]


async def spawn(
    replica_id: str, deployment_id: str, version_id: str, args: list[str], cwd: Path
) -> Proc:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        # its own session: a Ctrl-C at the terminal reaches the controller, which stops its
        # replicas with a drain, rather than every replica at once
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    proc = Proc(replica_id, deployment_id, version_id, process)
    proc.tasks = [
        asyncio.create_task(_read_stdout(proc)),
        asyncio.create_task(_read_stderr(proc)),
    ]
    return proc


async def _read_stdout(proc: Proc) -> None:
    """The first `PORT <n>` line gives the port; the rest is drained so the pipe never fills."""
    assert proc.process.stdout is not None
    async for raw in proc.process.stdout:
        line = raw.decode(errors="replace").strip()
        if not proc.port_known.is_set() and line.startswith("PORT "):
            with contextlib.suppress(ValueError):
                proc.port = int(line.split()[1])
                proc.port_known.set()


async def _read_stderr(proc: Proc) -> None:
    assert proc.process.stderr is not None
    async for raw in proc.process.stderr:
        proc.stderr.append(raw.decode(errors="replace").rstrip())


async def healthy(channel: grpc.aio.Channel) -> bool:
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1
        )
    except grpc.aio.AioRpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


async def stop(proc: Proc, grace: float = STOP_GRACE) -> int:
    """SIGTERM (the replica drains its in-flight calls), SIGKILL after `grace`."""
    proc.stopping = True
    if not proc.exited:
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
    code = await proc.process.wait()
    await asyncio.gather(*proc.tasks, return_exceptions=True)
    return code


def is_replica(pid: int) -> bool:
    """Whether `pid` is a replica process (a pid reused by another program is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return REPLICA_MODULE.encode() in cmdline


def kill_orphan(pid: int) -> bool:
    """SIGKILL a replica a dead controller left; True when there was one."""
    if pid <= 0 or pid == os.getpid() or not is_replica(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return True
