"""`make run` as a new user runs it: the stack starts on a fresh data folder (SQLite and a
Redis of its own), serves a compile job end to end, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc, trainer_pb2, trainer_pb2_grpc

from tests.conftest import ROOT
from tests.services.conftest import free_port

pytestmark = pytest.mark.e2e

SOURCE = "network N {\n  input: (4)\n  layers:\n    Dense(3)\n}\n"
TRAIN_SOURCE = SOURCE.replace("Dense(3)", "Output(3)\n  loss: sparse_categorical_crossentropy")


def test_make_run_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, trainer_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_")}
    env.update(
        {
            "NEURAL_DATA_DIR": str(tmp_path),
            "NEURAL_COMPILER_PORT": str(port),
            "NEURAL_COMPILER_METRICS_PORT": str(free_port()),
            "NEURAL_TRACKER_PORT": str(free_port()),
            "NEURAL_TRACKER_METRICS_PORT": str(free_port()),
            "NEURAL_TRAINER_PORT": str(trainer_port),
            "NEURAL_TRAINER_METRICS_PORT": str(free_port()),
            "NEURAL_LOCAL_REDIS_PORT": str(free_port()),
            "dramatiq_prom_port": str(free_port()),
            "PYTHONPATH": str(ROOT),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_stack.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            lines.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        text = "".join(lines)
        assert f"compiler   grpc 127.0.0.1:{port}" in text, text
        assert "sqlite: " in text
        key = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "service_kit.keys",
                    "create",
                    "--name",
                    "me",
                    "--role",
                    "admin",
                ],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.split("key:")[1]
            .split()[0]
        )
        md = (("authorization", f"Bearer {key}"),)
        stub = compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        job = stub.SubmitCompile(
            compiler_pb2.CompileRequest(source=SOURCE, backend=compiler_pb2.BACKEND_TENSORFLOW),
            metadata=md,
        )
        last = list(
            stub.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), metadata=md, timeout=60)
        )[-1]
        assert last.state == common_pb2.JOB_STATE_SUCCEEDED
        # the training worker trains and logs to the tracker it found through the stack
        trainer = trainer_pb2_grpc.TrainerServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{trainer_port}")
        )
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
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        for name in ("compiler", "tracker", "trainer", "trainer-worker", "redis"):
            assert f"stopped {name}" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
