"""`make run` as a new user runs it: the stack starts on a fresh data folder (SQLite and a
Redis of its own), serves a compile job end to end, restarts what crashes, and stops cleanly
on Ctrl-C (workers and services before Redis); `make demo` runs against it through the
settings file it writes, reusing its key. Clients call through the gateway (Envoy) with an
API key of the authz service's, as users do."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import pytest
from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from tests.conftest import ROOT
from tests.services.conftest import free_port
from tests.waiting import until

pytestmark = pytest.mark.e2e

SOURCE = "network N {\n  input: (4)\n  layers:\n    Dense(3)\n}\n"
TRAIN_SOURCE = SOURCE.replace("Dense(3)", "Output(3)\n  loss: sparse_categorical_crossentropy")


class Output:
    """The stack's output, read by a thread, so a test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if match := re.search(pattern, line):
                return match
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{self.text}")

    @property
    def text(self) -> str:
        return "".join(self.lines)


def stack_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_")}
    env.update(
        {
            "NEURAL_DATA_DIR": str(tmp_path),
            "NEURAL_COMPILER_PORT": str(free_port()),
            "NEURAL_COMPILER_METRICS_PORT": str(free_port()),
            "NEURAL_TRACKER_PORT": str(free_port()),
            "NEURAL_TRACKER_METRICS_PORT": str(free_port()),
            "NEURAL_TRAINER_PORT": str(free_port()),
            "NEURAL_TRAINER_METRICS_PORT": str(free_port()),
            "NEURAL_LOCAL_REDIS_PORT": str(free_port()),
            "NEURAL_AUTHZ_PORT": str(free_port()),
            "NEURAL_AUTHZ_METRICS_PORT": str(free_port()),
            "NEURAL_RATELIMIT_PORT": str(free_port()),
            "NEURAL_RATELIMIT_METRICS_PORT": str(free_port()),
            "NEURAL_GATEWAY_PORT": str(free_port()),
            "NEURAL_GATEWAY_ADMIN_PORT": str(free_port()),
            "dramatiq_prom_port": str(free_port()),
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def admin_key(env: dict[str, str]) -> str:
    """A key in the stack's authz service, created as its printed hint says."""
    out = subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "create", "--name", "me", "--role", "admin"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split("key:")[1].split()[0]


def answers(stub: compiler_pb2_grpc.CompilerServiceStub, md: tuple[tuple[str, str], ...]) -> bool:
    """Whether the compiler answers through the gateway (not while Envoy finds it down)."""
    try:
        stub.ListModels(compiler_pb2.ListModelsRequest(page_size=1), metadata=md, timeout=10)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False
    return True


def test_make_run_restarts_crashes_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    port, trainer_port = int(env["NEURAL_COMPILER_PORT"]), int(env["NEURAL_TRAINER_PORT"])
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_stack.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        out.wait_for("Ctrl-C stops everything")
        # the gateway first: the one address outside clients need
        gateway = f"127.0.0.1:{env['NEURAL_GATEWAY_PORT']}"
        first = out.wait_for(r"Neural platform is running:\n").string
        following = out.lines[out.lines.index(first) + 1]
        assert following.startswith(f"  gateway    http://{gateway} "), out.text
        docs = httpx.get(f"http://{gateway}/openapi.json", timeout=10)
        assert docs.status_code == 200 and docs.json()["openapi"].startswith("3."), docs.text
        assert f"compiler   grpc 127.0.0.1:{port}" in out.text, out.text
        assert "sqlite: " in out.text
        described = json.loads((tmp_path / "stack.json").read_text())
        assert described["pid"] == proc.pid
        assert described["addresses"]["compiler"] == f"127.0.0.1:{port}"
        assert described["database_url"].endswith(str(tmp_path / "neural.db"))

        # a crashed worker and a crashed service come back; the stack keeps serving
        for name in ("trainer-worker", "compiler"):
            pid = int(out.wait_for(rf"started {name} \(pid (\d+)\)").group(1))
            os.kill(pid, signal.SIGKILL)
            out.wait_for(rf"{name} exited with status -9; restarting in 1 s \(restart 1")
            again = int(out.wait_for(rf"started {name} \(pid (?!{pid}\b)(\d+)\)").group(1))
            assert again != pid
        assert proc.poll() is None, out.text
        deadline = time.monotonic() + 60
        while not listening(port) and time.monotonic() < deadline:
            time.sleep(0.2)

        key = admin_key(env)
        md = (("authorization", f"Bearer {key}"),)
        channel = grpc.insecure_channel(gateway)
        stub = compiler_pb2_grpc.CompilerServiceStub(channel)
        until(lambda: answers(stub, md), 60, "the restarted compiler answers through the gateway")
        job = stub.SubmitCompile(
            compiler_pb2.CompileRequest(source=SOURCE, backend=compiler_pb2.BACKEND_TENSORFLOW),
            metadata=md,
            wait_for_ready=True,
            timeout=60,
        )
        last = list(
            stub.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), metadata=md, timeout=60)
        )[-1]
        assert last.state == common_pb2.JOB_STATE_SUCCEEDED
        # the restarted training worker trains and logs to the tracker it found via the stack
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = trainer.SubmitTraining(
            trainer_pb2.SubmitTrainingRequest(
                source=TRAIN_SOURCE,
                dataset=trainer_pb2.DatasetSpec(
                    synthetic=trainer_pb2.SyntheticDataset(num_samples=64, num_classes=3)
                ),
                epochs=1,
            ),
            metadata=md,
        )
        last = list(
            trainer.WatchTrainingJob(
                common_pb2.WatchJobRequest(id=job.id), metadata=md, timeout=120
            )
        )[-1]
        assert last.job.state == common_pb2.JOB_STATE_SUCCEEDED, last.job.error
        # the key is the gateway's to check: a service called straight with it refuses it
        straight = trainer_pb2_grpc.TrainerServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{trainer_port}")
        )
        with pytest.raises(grpc.RpcError) as refused:
            straight.GetTrainingJob(common_pb2.GetJobRequest(id=job.id), metadata=md, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # `make demo` finds this stack through stack.json, and keeps its key for the next run
        demo_env = {**env, "TMPDIR": str(tmp_path)}
        for _ in range(2):
            demo = subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "demo.py")],
                env=demo_env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert demo.returncode == 0, demo.stdout + demo.stderr
            assert "using the stack of `make run`" in demo.stdout
        assert (tmp_path / "demo.key").stat().st_mode & 0o777 == 0o600
        keys = subprocess.run(
            [sys.executable, "-m", "gateway.authz.keys", "list"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        names = [line.split()[-2] for line in keys.splitlines() if line.strip()]
        assert names.count("demo") == 1, keys  # the second demo reused the first one's key
        assert not list(tmp_path.glob("neural-demo-*"))

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0, out.text
        out.wait_for("stopped redis")
        stopped = re.findall(r"^stopped (\S+)$", out.text, re.M)
        # workers, then services, then Redis: nobody loses its broker while running
        workers = {"trainer-worker", "compiler-worker", "deployer-controller"}
        assert stopped[-1] == "redis" and set(stopped[:3]) == workers
        assert set(stopped) == {
            "compiler",
            "tracker",
            "trainer",
            "deployer",
            *workers,
            "redis",
            "envoy",
            "authz",
            "ratelimit",
        }
        logs = {p.name: p.read_text(errors="replace") for p in tmp_path.glob("*.log")}
        assert not [name for name, text in logs.items() if "CRITICAL" in text], logs
        assert not (tmp_path / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_ignores_an_undescribed_server_and_removes_its_own_stack(tmp_path: Path) -> None:
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    data.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_")}
    with socket.socket() as decoy:  # something on the trainer's port that no settings describe
        decoy.bind(("127.0.0.1", 0))
        decoy.listen()
        env |= {
            "NEURAL_DATA_DIR": str(data),
            "NEURAL_TRAINER_PORT": str(decoy.getsockname()[1]),
            "TMPDIR": str(tmp),
            "PYTHONPATH": str(ROOT),
        }
        demo = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo.py")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "no stack is running: starting one for the demo" in demo.stdout
    assert "val_accuracy by epoch" in demo.stdout
    assert list(tmp.iterdir()) == []  # its stack's folder, key included, is gone
    assert list(data.iterdir()) == []


def test_make_run_refuses_ports_another_process_holds(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", int(env["NEURAL_TRACKER_PORT"])))
        holder.listen()
        done = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "run_stack.py")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert f"{env['NEURAL_TRACKER_PORT']} (tracker, NEURAL_TRACKER_PORT)" in done.stderr
    assert "Is another `make run` running" in done.stderr
    assert not (tmp_path / "redis.log").exists()  # nothing was started
