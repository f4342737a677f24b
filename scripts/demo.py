"""`make demo`: compile -> train (live progress) -> track -> deploy -> predict, against the
local stack.

Finds the stack `make run` started through the settings file it writes
(`$NEURAL_DATA_DIR/stack.json`, default `.run/stack.json`): its gateway, its addresses and its
database, where the demo's API key is created in the authz service's table (`neural-keys
create`). Every call goes through the gateway (Envoy) with `authorization: Bearer <key>`, as
a user's would. Nothing else counts as a stack: a process listening on a default port that
the demo cannot authenticate to is left alone. When no stack is running, the demo starts one
of its own in a temporary folder, on the ports the environment names (NEURAL_GATEWAY_PORT,
NEURAL_<SERVICE>_PORT, ... as for `make run`) where they are free, else on free ones, and
stops and removes it at the end. The key is kept in `demo.key` beside `stack.json`
(owner-only) and reused while the stack accepts it. The trained run's `model.onnx` is deployed,
the digits are predicted through the gateway (the JSON-friendly `Predict`, and one call of the
Open Inference Protocol's `ModelInfer` routed straight to the replica), the accuracy of the
served predictions printed, and the deployment deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import struct_pb2
from inference import grpc_predict_v2_pb2 as oip
from inference import grpc_predict_v2_pb2_grpc as oip_grpc
from local_stack import free_port, stack_process
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    deployer_pb2,
    deployer_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
STACK_FILE = "stack.json"
KEY_FILE = "demo.key"
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


def listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_stack(data: Path) -> dict[str, Any] | None:
    """The stack described by `data/stack.json`, when its supervisor and services are up."""
    try:
        stack = json.loads((data / STACK_FILE).read_text(encoding="utf-8"))
        if not alive(int(stack["pid"])):
            return None
        if all(listening(a) for a in [stack["gateway"], *stack["addresses"].values()]):
            return stack
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None


def port(env: dict[str, str], name: str) -> str:
    """The port the environment names under `name` while nothing holds it, else a free one:
    the demo's own stack never lands on a port that something else (a `make run`) is using."""
    with contextlib.suppress(KeyError, ValueError, OSError), socket.socket() as s:
        s.bind(("127.0.0.1", int(env[name])))
        return env[name]
    return str(free_port())


@contextlib.contextmanager
def own_stack(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A stack for the demo alone: its ports, a temporary folder, both gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="neural-demo-") as tmp:
        env = env | {"NEURAL_DATA_DIR": tmp}
        # what the stack's processes leave in a temporary directory (torch's compile cache,
        # Dramatiq's metrics files) goes inside this folder, and away with it
        (Path(tmp) / "tmp").mkdir()
        env["TMPDIR"] = str(Path(tmp) / "tmp")
        # never a default port (the 8080 of a `make run`) unless the environment names it
        names = ["NEURAL_LOCAL_REDIS_PORT", "dramatiq_prom_port"]
        names += ["NEURAL_GATEWAY_PORT", "NEURAL_GATEWAY_ADMIN_PORT"]
        for service in ("compiler", "trainer", "tracker", "deployer", "authz", "ratelimit"):
            names += [f"NEURAL_{service.upper()}_PORT", f"NEURAL_{service.upper()}_METRICS_PORT"]
            env.pop(f"NEURAL_{service.upper()}_ADDRESS", None)
        for name in names:
            env[name] = port(env, name)
        print(f"0. no stack is running: starting one for the demo in {tmp}")
        try:
            with stack_process(env, echo=lambda line: print("   " + line)):
                stack = find_stack(Path(tmp))
                if stack is None:
                    raise SystemExit("the demo's stack did not start")
                yield stack
        finally:
            print("   the demo's stack stopped and its folder was removed")


def create_key(env: dict[str, str], stack: dict[str, Any]) -> str:
    """A user key in the stack's authz service (its table in the stack's database); the
    demo's earlier key, which no longer served, is revoked."""
    env = env | {"NEURAL_DATABASE_URL": stack["database_url"], "NEURAL_DATA_DIR": stack["data_dir"]}
    out = subprocess.run(
        [
            *(sys.executable, "-m", "gateway.authz.keys", "create", "--name", "demo"),
            *("--role", "user", "--replace"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("key:"))


def demo_key(env: dict[str, str], stack: dict[str, Any], compiler: Any) -> str:
    """The key kept beside the stack's settings while the stack accepts it, else a new one."""
    path = Path(stack["data_dir"]) / KEY_FILE
    with contextlib.suppress(OSError):
        key = path.read_text(encoding="utf-8").strip()
        try:
            compiler.ListModels(
                compiler_pb2.ListModelsRequest(page_size=1),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
            return key
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
    key = create_key(env, stack)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    return key


def main() -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    data = Path(env.get("NEURAL_DATA_DIR", str(ROOT / ".run"))).resolve()
    with contextlib.ExitStack() as cleanup:
        stack = find_stack(data)
        if stack is None:
            stack = cleanup.enter_context(own_stack(env))
        else:
            print(f"0. using the stack of `make run` ({data / STACK_FILE})")
        return run_demo(env, stack)


def run_demo(env: dict[str, str], stack: dict[str, Any]) -> int:
    gateway = grpc.insecure_channel(stack["gateway"])  # every service, behind one address
    compiler = compiler_pb2_grpc.CompilerServiceStub(gateway)
    trainer = trainer_pb2_grpc.TrainerServiceStub(gateway)
    tracker = tracker_pb2_grpc.TrackerServiceStub(gateway)
    meta = (("authorization", f"Bearer {demo_key(env, stack, compiler)}"),)
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
    files = tracker.ListArtifacts(tracker_pb2.ListArtifactsRequest(run_id=run_id), metadata=meta)
    print("   artifacts: " + ", ".join(f"{a.path} ({a.size_bytes} B)" for a in files.artifacts))
    return deploy_and_predict(gateway, meta, run_id)


def deploy_and_predict(gateway: grpc.Channel, meta: tuple, run_id: str) -> int:
    from sklearn.datasets import load_digits

    deployer = deployer_pb2_grpc.DeployerServiceStub(gateway)
    name = f"digits-demo-{run_id[:8]}"
    print(f"4. deploy: the run's model.onnx as deployment {name}")
    started = time.monotonic()
    created = deployer.CreateDeployment(
        deployer_pb2.CreateDeploymentRequest(
            deployment=deployer_pb2.Deployment(
                name=name,
                run_artifact=deployer_pb2.RunArtifactRef(run_id=run_id, path="model.onnx"),
            )
        ),
        metadata=meta,
        timeout=120,
    )
    try:
        deployment = created
        while deployment.ready_replicas < 1:
            if deployment.state == deployer_pb2.DEPLOYMENT_STATE_FAILED:
                print(f"   the deployment failed: {deployment.error}")
                return 1
            if time.monotonic() - started > 120:
                print("   no replica ready within 120 s")
                return 1
            time.sleep(0.2)
            deployment = deployer.GetDeployment(
                deployer_pb2.GetDeploymentRequest(id=created.id), metadata=meta
            )
        state = deployer_pb2.DeploymentState.Name(deployment.state)
        took = time.monotonic() - started
        print(f"   {state} in {took:.1f}s, {deployment.ready_replicas} replica(s) ready")

        print("5. predict: every digit through the gateway, as JSON rows (Predict)")
        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)  # the trainer's preprocessing for digits
        predicted = []
        for start in range(0, len(x), 64):
            rows = struct_pb2.ListValue()
            rows.extend([row.tolist() for row in x[start : start + 64]])
            answer = deployer.Predict(
                deployer_pb2.PredictRequest(id=created.id, instances=rows), metadata=meta
            )
            predicted += [int(np.argmax(list(p))) for p in answer.predictions]
        accuracy = float(np.mean(np.array(predicted) == digits.target))
        print(
            f"   accuracy of the served predictions on all {len(x)} digits "
            f"(training and validation rows): {accuracy:.3f} (model {answer.model_version})"
        )
        first = oip_grpc.GRPCInferenceServiceStub(gateway).ModelInfer(
            oip.ModelInferRequest(
                model_name=name,
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name=deployment_input(gateway, meta, name),
                        datatype="FP32",
                        shape=[1, 64],
                        contents=oip.InferTensorContents(fp32_contents=x[0].tolist()),
                    )
                ],
            ),
            metadata=(*meta, ("neural-deployment", name)),
        )
        scores = first.outputs[0].contents.fp32_contents
        print(
            f"   the Open Inference Protocol (ModelInfer, straight to the replica): digit 0 is "
            f"{int(np.argmax(scores))} (label {digits.target[0]})"
        )
        return 0
    finally:
        deployer.DeleteDeployment(
            deployer_pb2.DeleteDeploymentRequest(id=created.id), metadata=meta
        )
        print("6. the deployment deleted")


def deployment_input(gateway: grpc.Channel, meta: tuple, name: str) -> str:
    """The model's input name, from the protocol's metadata."""
    metadata = oip_grpc.GRPCInferenceServiceStub(gateway).ModelMetadata(
        oip.ModelMetadataRequest(name=name), metadata=(*meta, ("neural-deployment", name))
    )
    return metadata.inputs[0].name


if __name__ == "__main__":
    sys.exit(main())
