"""`make demo`: compile -> train (live progress) -> track, against the local stack.

Uses the stack `make run` started when it is up; otherwise starts one for the demo (in a
fresh data folder) and stops it at the end. Deployment and prediction join the demo when
the deployer exists.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = """
network DigitsDemo {
  input: (64,)
  layers:
    Dense(64, "relu")
    Dropout(0.1)
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
  train { epochs: 10 batch_size: 32 validation_split: 0.2 }
}
"""


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def port(name: str, default: int) -> int:
    return int(os.environ.get(f"NEURAL_{name.upper()}_PORT", default))


def start_stack(env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_stack.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print("   " + line.rstrip())
        if line.startswith("Ctrl-C"):
            return proc
    raise SystemExit("the stack did not start; see its logs")


def create_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "service_kit.keys", "create", "--name", "demo", "--role", "user"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))


def main() -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    stack = None
    if not listening(port("trainer", 50052)):
        env.setdefault("NEURAL_DATA_DIR", tempfile.mkdtemp(prefix="neural-demo-"))
        env.setdefault("NEURAL_LOCAL_REDIS_PORT", "6391")
        print(f"0. starting a stack for the demo in {env['NEURAL_DATA_DIR']}")
        stack = start_stack(env)
    try:
        key = create_key(env)
        meta = (("authorization", f"Bearer {key}"),)
        channel = lambda name, p: grpc.insecure_channel(f"127.0.0.1:{port(name, p)}")  # noqa: E731
        compiler = compiler_pb2_grpc.CompilerServiceStub(channel("compiler", 50051))
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel("trainer", 50052))
        tracker = tracker_pb2_grpc.TrackerServiceStub(channel("tracker", 50053))

        print("1. compile: the DSL program -> PyTorch")
        model = compiler.Compile(
            compiler_pb2.CompileRequest(
                source=PROGRAM, backend=compiler_pb2.BACKEND_PYTORCH, name="digits-demo"
            ),
            metadata=meta,
        ).model
        print(f"   model {model.id}: {model.total_params} parameters")

        print("2. train on scikit-learn's digits, watching the job live")
        job = trainer.SubmitTraining(
            trainer_pb2.SubmitTrainingRequest(
                model_id=model.id,
                dataset=trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS),
                experiment="demo",
            ),
            metadata=meta,
        )
        started = time.monotonic()
        last = None
        for event in trainer.WatchTrainingJob(
            common_pb2.WatchJobRequest(id=job.id), metadata=meta, timeout=600
        ):
            last = event
            epoch_end = event.message.startswith("epoch ") and "/" in event.message
            metrics = "  ".join(f"{k} {v:.4f}" for k, v in sorted(event.metrics.items()))
            metrics = metrics if epoch_end or event.type == "completed" else ""
            bar = "#" * int(event.progress * 20)
            print(
                f"   {time.monotonic() - started:5.1f}s {event.type:9s} [{bar:20s}] "
                f"epoch {event.epoch:2d} {metrics or event.message}"
            )
        assert last is not None
        if last.job.state != common_pb2.JOB_STATE_SUCCEEDED:
            print(f"   the job ended {last.type}: {last.job.error}")
            return 1

        print("3. track: the run in the tracker")
        run_id = last.job.details["run_id"]
        run = tracker.GetRun(tracker_pb2.GetRunRequest(id=run_id), metadata=meta)
        print(f"   run {run.id} ({tracker_pb2.RunStatus.Name(run.status)})")
        print("   params: " + ", ".join(f"{k}={v}" for k, v in sorted(run.params.items())))
        curve = tracker.GetMetricHistory(
            tracker_pb2.GetMetricHistoryRequest(run_id=run_id, key="val_accuracy"), metadata=meta
        )
        print("   val_accuracy by epoch: " + " ".join(f"{m.value:.3f}" for m in curve.metrics))
        files = tracker.ListArtifacts(
            tracker_pb2.ListArtifactsRequest(run_id=run_id), metadata=meta
        )
        print("   artifacts: " + ", ".join(f"{a.path} ({a.size_bytes} B)" for a in files.artifacts))
        return 0
    finally:
        if stack is not None:
            stack.send_signal(signal.SIGINT)
            stack.wait(timeout=60)
            print("   stack stopped")


if __name__ == "__main__":
    sys.exit(main())
