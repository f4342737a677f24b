"""The servers the RPC fuzz test calls: tracker, compiler, trainer, the authz service and the
deployer (with its controller, which runs real replica processes) on one database and a Redis
of their own, no workers (queued jobs stay queued), callers with real signed tokens, and a few
real records whose ids and names the generated requests can use."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from hypothesis import strategies as st
from neural.v1 import (
    auth_pb2,
    auth_pb2_grpc,
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
from service_kit.auth import Principal
from service_kit.internal_token import Signer, load_private_key

from gateway.authz.app import API_AUDIENCE, API_TOKEN_SECONDS
from tests import tokens
from tests.services.conftest import free_port
from tests.services.trainer_stack import TrainerStack, make_trainer_stack
from tests.waiting import until

SERVICES = ("tracker", "compiler", "trainer")
SERVERS = (*SERVICES, "authz", "deployer")  # what the fuzz test starts and calls
ROLES = ("admin", "user", "viewer")

PROGRAM = """
network Digits {
  input: (64,)
  layers:
    Dense(16, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.005)
  train { epochs: 2 batch_size: 32 validation_split: 0.2 }
}
"""
SEARCHABLE = """
network Tuned {
  input: (64,)
  layers:
    Dense(HPO(choice(8, 16)), "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=HPO(log_range(0.001, 0.01)))
  train { epochs: 1 batch_size: 64 }
}
"""
CSV = b"a,b,label\n" + b"".join(f"{i / 10},{i % 3},{i % 2}\n".encode() for i in range(40))


def start(tmp: Path, database_url: str, servers: tuple[str, ...] = SERVICES) -> TrainerStack:
    stack = make_trainer_stack(tmp, database_url)
    stack.env["NEURAL_DATABASE_URL"] = database_url
    stack.start_redis()
    for name in servers:  # one by one: each migrates its tables at start
        if name == "authz":
            stack.start_authz()
        elif name == "deployer":
            start_deployer(stack, tmp)
        else:
            stack.start_service(name)
            stack.wait_service(name)
    return stack


def start_deployer(stack: TrainerStack, tmp: Path) -> None:
    """The deployer's server, which fetches models from the tracker and the compiler started
    before it, and its controller, which runs the replicas and writes Envoy's cluster file
    under `tmp`."""
    port = free_port()
    stack.ports["deployer"] = port
    stack.env.update(
        {
            "NEURAL_DEPLOYER_PORT": str(port),
            "NEURAL_DEPLOYER_METRICS_PORT": str(free_port()),
            "NEURAL_DEPLOYER_ADDRESS": f"127.0.0.1:{port}",
            "NEURAL_ENVOY_DYNAMIC_DIR": str(tmp / "envoy-dynamic"),
            "NEURAL_GATEWAY_URL": "http://gateway.fuzz:8080",
            # a Predict that wakes a deployment scaled to zero answers within the fuzz's
            # deadline
            "NEURAL_DEPLOYER_COLD_START_S": "5",
        }
    )
    stack.start_service("deployer")
    stack.wait_service("deployer")
    stack.start("controller", [sys.executable, "-m", "services.deployer.controller"])


def stop(stack: TrainerStack) -> list[int]:
    """Stop every process, the controller first (it drains and stops its replicas, which need
    no other server for that); the replicas of this stack still alive after it, killed."""
    if "controller" in stack.procs:
        stack.stop("controller")
    stack.stop_all()
    left = replica_pids(stack.env["NEURAL_STORAGE_DIR"])
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(left)


def replica_pids(storage: str) -> set[int]:
    """The live replica processes serving a model stored under `storage`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        replica = b"services.deployer.replica" in args
        if replica and state != "Z" and any(a.startswith(storage.encode()) for a in args):
            found.add(int(entry.name))
    return found


def token(role: str, subject: str | None = None) -> str:
    """An internal token the services accept, signed as the authz service signs one."""
    return tokens.sign(subject or f"fuzz-{role}", role)


def authz_token(role: str) -> str:
    """An API token the authz service accepts for `role`, signed with its private key as
    IssueToken signs one, but bound to no API key: no RevokeApiKey or RotateApiKey the fuzz
    sends can take the fuzz's own credentials away (a token IssueToken made from a key dies
    with that key, and a key is what those RPCs reach)."""
    signer = Signer(load_private_key(tokens.private_key_file()), API_TOKEN_SECONDS, API_AUDIENCE)
    return signer.sign(Principal(f"fuzz-{role}", role))


def credentials(server: str, role: str) -> tuple[tuple[str, str], ...]:
    """Call metadata for `role` at `server`: an API token for the authz service (what it
    checks itself), an internal token for the others (what the gateway would pass them)."""
    if server == "authz":
        return bearer(authz_token(role))
    return tokens.meta(token(role))


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def _artifact(run_id: str, path: str, data: bytes) -> Iterator[tracker_pb2.ArtifactChunk]:
    yield tracker_pb2.ArtifactChunk(
        run_id=run_id,
        path=path,
        chunk=common_pb2.Chunk(data=data, offset=0, name=path, total_size=len(data)),
    )
    yield tracker_pb2.ArtifactChunk(
        chunk=common_pb2.Chunk(offset=len(data), sha256=hashlib.sha256(data).hexdigest())
    )


def _dataset(name: str, data: bytes) -> Iterator[common_pb2.Chunk]:
    yield common_pb2.Chunk(data=data, offset=0, name=name, total_size=len(data))
    yield common_pb2.Chunk(offset=len(data), sha256=hashlib.sha256(data).hexdigest())


def seed(stack: TrainerStack, md: tuple[tuple[str, str], ...]) -> dict[str, list[Any]]:
    """Records owned by the subject of metadata `md` (an experiment with two runs, their
    params, tags, metrics, one of values near the largest double, an artifact, a compiled
    model, a compile job, a dataset, a training and a search job) and the values requests may
    draw."""
    tracker = tracker_pb2_grpc.TrackerServiceStub(
        grpc.insecure_channel(stack.address_of("tracker"))
    )
    compiler = compiler_pb2_grpc.CompilerServiceStub(
        grpc.insecure_channel(stack.address_of("compiler"))
    )
    trainer = trainer_pb2_grpc.TrainerServiceStub(
        grpc.insecure_channel(stack.address_of("trainer"))
    )
    suffix = str(time.monotonic_ns())
    exp = tracker.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(
            experiment=tracker_pb2.Experiment(name="fuzz" + suffix)
        ),
        metadata=md,
    )
    runs = [
        tracker.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name=n)),
            metadata=md,
        )
        for n in ("first", "second")
    ]
    for i, run in enumerate(runs):
        tracker.LogParams(
            tracker_pb2.LogParamsRequest(run_id=run.id, params={"lr": str(0.1 * (i + 1))}),
            metadata=md,
        )
        tracker.SetTags(tracker_pb2.SetTagsRequest(run_id=run.id, tags={"team": "a"}), metadata=md)
        points = [
            tracker_pb2.Metric(key=key, value=value * (step + 1), step=step)
            for step in range(5)
            for key, value in (("loss", 0.5), ("accuracy", 0.1), ("huge", 1.7e308 / 5))
        ]
        tracker.LogMetrics(
            tracker_pb2.LogMetricsRequest(run_id=run.id, metrics=points), metadata=md
        )
    tracker.UploadArtifact(_artifact(runs[0].id, "model.txt", b"weights"), metadata=md)
    model = compiler.Compile(
        compiler_pb2.CompileRequest(source=PROGRAM, backend=compiler_pb2.BACKEND_PYTORCH),
        metadata=md,
    ).model
    compile_job = compiler.SubmitCompile(
        compiler_pb2.CompileRequest(source=PROGRAM, backend=compiler_pb2.BACKEND_TENSORFLOW),
        metadata=md,
    )
    dataset = trainer.UploadDataset(_dataset("fuzz.csv", CSV), metadata=md)
    digits = trainer_pb2.DatasetSpec(builtin=trainer_pb2.BUILTIN_DATASET_DIGITS)
    training = trainer.SubmitTraining(
        trainer_pb2.SubmitTrainingRequest(model_id=model.id, dataset=digits, experiment=exp.name),
        metadata=md,
    )
    search = trainer.SubmitSearch(
        trainer_pb2.SubmitSearchRequest(
            source=SEARCHABLE, dataset=digits, n_trials=2, objective="val_accuracy"
        ),
        metadata=md,
    )
    ids = [exp.id, *(r.id for r in runs), model.id, compile_job.id, dataset.id]
    ids += [training.id, search.id]
    return {
        "id": ids,
        "source": [PROGRAM, SEARCHABLE],
        "network": ["Digits", "Tuned"],
        "name": [exp.name, "Default", ".upload-x.csv", "data.csv", "first"],
        "experiment": [exp.name, "Default", "a" * 300],
        "filter": [
            "metrics.loss < 1",
            "metrics.huge > 1e308",
            "start_time > 1e20",
            "end_time < -1e20",
            "params.lr = '0.1' and tags.team LIKE 'a%'",
            "attributes.status = 'RUNNING' or run_name ILIKE '%FIRST%'",
        ],
        "order_by": ["metrics.", "metrics.loss DESC", "params.", "start_time", "params.lr ASC"],
        "key": ["loss", "accuracy", "huge"],
        "metric_key": ["loss", "accuracy", "huge"],
        "path": ["model.txt", "dir/a.txt", ".upload-x", "model.txt/x", "p" * 300],
        "objective": ["val_accuracy", "loss"],
        "x_axis": ["step", "time"],
        "url": ["https://example.com/hook", "http://127.0.0.1:1/x", "ftp://x"],
        "event": ["completed", "failed", "progress"],
        "paths": ["name", "status", "end_time", "bogus"],
        "page_token": ["", "AAAA", "eyJ4IjogMX0=", "o:1", "-1", "9" * 30],
        "sha256": [hashlib.sha256(b"weights").hexdigest(), "0" * 64, "zz"],
        # numbers a handler accepts, so requests get past their range checks
        "width": [100, 400, 4000],
        "height": [100, 300],
        "page_size": [0, 1, 2, 1000, -1],
        "max_points": [0, 2, 3],
        "n_trials": [1, 2],
        "num_samples": [1, 64],
        "num_classes": [2, 10],
        "epochs": [1, 2],
        "batch_size": [1, 32],
        "step": [0, 1, 4],
        "offset": [0, 7],
        "total_size": [0, 7],
        "learning_rate": [0.001, 10.0],
        "validation_split": [0.0, 0.2, 0.99],
        "value": [0.5, 1e307, 1.7e308],
    }


def seed_authz(stack: TrainerStack, md: tuple[tuple[str, str], ...]) -> dict[str, list[Any]]:
    """API keys of each role made by the admin of metadata `md` (one scoped to an RPC), and
    the values AuthService requests may draw: their ids and secrets, subjects, scopes,
    overlaps."""
    scopes = ["/neural.v1.CompilerService/Validate", "/neural.v1.TrackerService/ListRuns"]
    with grpc.insecure_channel(stack.address_of("authz")) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        made = [
            auth.CreateApiKey(
                auth_pb2.CreateApiKeyRequest(name=f"fuzz-{role}", role=role, scopes=scoped),
                metadata=md,
            )
            for role, scoped in (
                (auth_pb2.ROLE_ADMIN, []),
                (auth_pb2.ROLE_USER, []),
                (auth_pb2.ROLE_VIEWER, []),
                (auth_pb2.ROLE_USER, scopes[:1]),
            )
        ]
    return {
        "id": [m.api_key.id for m in made],
        "api_key": [m.key for m in made] + ["nk_" + "x" * 40],
        "subject": ["fuzz-admin", "fuzz-user", "fuzz-viewer", "nobody"],
        "scope": [*scopes, "/neural.v1.X", "neural.v1.CompilerService/Compile"],
        "overlap_seconds": [0, 1, 3600, 7 * 24 * 3600],
        "name": ["fuzz-key", "k" * 200, " "],
    }


MAX_REPLICAS = 2  # the most replicas a request of the fuzz may validly ask for
ROW = [i / 64 for i in range(64)]  # one input of PROGRAM's network, (64,)


def replicas() -> st.SearchStrategy[int]:
    """Replica counts for DeployerService's requests: any one it must refuse (below 0, over
    100), but of those it takes only 0 to MAX_REPLICAS, as each starts a real process."""
    return st.one_of(
        st.integers(0, MAX_REPLICAS),
        st.sampled_from([-1, 101, -(2**31), 2**31 - 1]),
        st.integers(-(2**31), -1),
        st.integers(101, 2**31 - 1),
    )


def _rows(*rows: list[Any]) -> struct_pb2.ListValue:
    out = struct_pb2.ListValue()
    out.extend(list(rows))
    return out


def seed_deployer(stack: TrainerStack, md: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """What DeployerService's requests draw, owned by the subject of `md`: PROGRAM compiled to
    ONNX (and to PyTorch, which the deployer refuses), a run holding the ONNX file as
    "model.onnx" and a file onnxruntime cannot load as "broken.onnx", and a READY deployment
    of the model (see `redeploy`)."""
    suffix = str(time.monotonic_ns())
    with grpc.insecure_channel(stack.address_of("compiler")) as channel:
        compiler = compiler_pb2_grpc.CompilerServiceStub(channel)
        onnx, torch = (
            compiler.Compile(
                compiler_pb2.CompileRequest(source=PROGRAM, backend=backend),
                metadata=md,
                timeout=240,
            ).model
            for backend in (compiler_pb2.BACKEND_ONNX, compiler_pb2.BACKEND_PYTORCH)
        )
        request = compiler_pb2.DownloadModelRequest(id=onnx.id)
        data = b"".join(c.data for c in compiler.DownloadModel(request, metadata=md, timeout=60))
    with grpc.insecure_channel(stack.address_of("tracker")) as channel:
        tracker = tracker_pb2_grpc.TrackerServiceStub(channel)
        exp = tracker.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(
                experiment=tracker_pb2.Experiment(name="fuzz-deploy" + suffix)
            ),
            metadata=md,
        )
        run = tracker.CreateRun(tracker_pb2.CreateRunRequest(experiment_id=exp.id), metadata=md)
        tracker.UploadArtifact(_artifact(run.id, "model.onnx", data), metadata=md)
        tracker.UploadArtifact(_artifact(run.id, "broken.onnx", b"not a model"), metadata=md)
    pools: dict[str, Any] = {
        "model_id": [onnx.id, torch.id, "0" * 32],
        "run_id": [run.id, "0" * 32],
        "path": ["model.onnx", "broken.onnx", "nothing.onnx", "model.onnx/x", "p" * 1001],
        # valid counts are few and small (replicas()): a deployment made starts processes
        "replicas": replicas(),
        "min_replicas": replicas(),
        "max_replicas": replicas(),
        "traffic_percent": [1, 50, 100],
        "cpu": ["500m", "2", "0.5", "1e3", "0", "1\n"],
        "memory": ["512Mi", "1Gi", "1Ei", "9" * 40],
        "gpu": [0],
        "max_batch_size": [0, 1, 64],
        "max_batch_delay_us": [0, 500],
        "instances": [
            _rows(ROW),
            _rows(ROW, ROW[::-1]),
            _rows(ROW[:5]),
            _rows([ROW, ROW]),
            _rows(*([ROW] * 65)),  # over the default batch of 64
        ],
        "inputs": [
            deployer_pb2.Tensor(shape=[1, 64], dtype="float32", float_data=ROW),
            deployer_pb2.Tensor(shape=[2, 32], dtype="float32", float_data=ROW),
            deployer_pb2.Tensor(shape=[1, 64], dtype="int64", int64_data=range(64)),
            deployer_pb2.Tensor(shape=[0, 64], dtype="float32"),  # an empty batch
            # empty, but the product of its other dimensions overflows NumPy's
            deployer_pb2.Tensor(shape=[2**62, 2**62, 0], dtype="float32"),
        ],
        "dtype": ["float32", "int64", "float16"],
        "shape": [0, 1, 2, 64, 2**62],
    }
    return redeploy(stack, md, pools)


def redeploy(
    stack: TrainerStack, md: tuple[tuple[str, str], ...], pools: dict[str, Any], cold: bool = False
) -> dict[str, Any]:
    """`pools` with a fresh deployment of the ONNX model, READY with a ready replica, in place
    of the one they named (deleted, so its replica stops): after an RPC that may have deleted,
    scaled to 0 or rolled it out, the next ones get one that serves. Its id and name are the
    `id`s drawn; the names include one free name, so a CreateDeployment of the fuzz makes at
    most a few deployments (and their replicas). With `cold`, also an autoscaled deployment
    at zero replicas (`cold`), which a Predict wakes."""
    suffix = str(time.monotonic_ns())
    with grpc.insecure_channel(stack.address_of("deployer")) as channel:
        deployer = deployer_pb2_grpc.DeployerServiceStub(channel)
        for old in pools.get("id", [])[:1]:
            with contextlib.suppress(grpc.RpcError):
                deployer.DeleteDeployment(
                    deployer_pb2.DeleteDeploymentRequest(id=old), metadata=md, timeout=30
                )
        made = deployer.CreateDeployment(
            deployer_pb2.CreateDeploymentRequest(
                deployment=deployer_pb2.Deployment(
                    name="fuzz-" + suffix, model_id=pools["model_id"][0], replicas=1
                )
            ),
            metadata=md,
            timeout=120,
        )

        def serving() -> bool:
            d = deployer.GetDeployment(
                deployer_pb2.GetDeploymentRequest(id=made.id), metadata=md, timeout=30
            )
            assert d.state != deployer_pb2.DEPLOYMENT_STATE_FAILED, d.error
            return d.state == deployer_pb2.DEPLOYMENT_STATE_READY and d.ready_replicas >= 1

        until(serving, 180, f"deployment {made.name} READY\n" + stack.log("controller"), 0.2)
        sleeping = []
        if cold:
            sleeping.append(
                deployer.CreateDeployment(
                    deployer_pb2.CreateDeploymentRequest(
                        deployment=deployer_pb2.Deployment(
                            name="cold-" + suffix,
                            model_id=pools["model_id"][0],
                            replicas=0,
                            min_replicas=0,
                            max_replicas=1,
                        )
                    ),
                    metadata=md,
                    timeout=120,
                ).id
            )
    names = [made.name, "made-" + suffix, "Not_A_Label", "-x", "x" * 64, "\u00e9t\u00e9"]
    return {**pools, "id": [made.id, made.name], "name": names, "cold": sleeping}


def deployer_requests(
    stack: TrainerStack, md: tuple[tuple[str, str], ...], pools: dict[str, Any]
) -> dict[str, list[Any]]:
    """Valid DeployerService requests on the records of `pools`, by RPC: the fuzz also sends
    them with generated fields merged in, since a generated request rarely gets every field
    right at once (an id that exists, a model, a share, rows of the model's width)."""
    d, name = pools["id"][0], pools["name"][1]  # the seeded deployment, a free name
    onnx, run = pools["model_id"][0], pools["run_id"][0]
    artifact = deployer_pb2.RunArtifactRef(run_id=run, path="model.onnx")
    found = {
        "CreateDeployment": [
            deployer_pb2.CreateDeploymentRequest(
                deployment=deployer_pb2.Deployment(name=name, model_id=onnx, replicas=1)
            ),
            deployer_pb2.CreateDeploymentRequest(
                deployment=deployer_pb2.Deployment(name=name, run_artifact=artifact, replicas=0)
            ),
        ],
        "ScaleDeployment": [deployer_pb2.ScaleDeploymentRequest(id=d, replicas=MAX_REPLICAS)],
        "RolloutDeployment": [
            deployer_pb2.RolloutDeploymentRequest(id=d, model_id=onnx, traffic_percent=50),
            deployer_pb2.RolloutDeploymentRequest(id=d, run_artifact=artifact, traffic_percent=100),
        ],
        "PromoteDeployment": [deployer_pb2.PromoteDeploymentRequest(id=d)],
        "RollbackDeployment": [deployer_pb2.RollbackDeploymentRequest(id=d)],
        "Predict": [
            *(deployer_pb2.PredictRequest(id=d, instances=rows) for rows in pools["instances"][:2]),
            deployer_pb2.PredictRequest(id=d, inputs=pools["inputs"][:1]),
            # woken from zero replicas
            *(deployer_pb2.PredictRequest(id=c, inputs=pools["inputs"][:1]) for c in pools["cold"]),
        ],
        "RenderManifests": [deployer_pb2.RenderManifestsRequest(id=d)],
    }
    jobs = _rollout_jobs(stack, md)
    if jobs:
        found["GetRolloutJob"] = [common_pb2.GetJobRequest(id=j) for j in jobs]
        found["WatchRolloutJob"] = [common_pb2.WatchJobRequest(id=j) for j in jobs]
    return found


def _rollout_jobs(stack: TrainerStack, md: tuple[tuple[str, str], ...]) -> list[str]:
    """The ids of the rollout jobs `md`'s subject sees, where the deployer has such jobs."""
    methods = deployer_pb2.DESCRIPTOR.services_by_name["DeployerService"].methods_by_name
    if "ListRolloutJobs" not in methods:
        return []
    with (
        grpc.insecure_channel(stack.address_of("deployer")) as channel,
        contextlib.suppress(grpc.RpcError),  # the fuzz calls it too, and reports what it finds
    ):
        listed = channel.unary_unary(
            "/neural.v1.DeployerService/ListRolloutJobs",
            request_serializer=common_pb2.ListJobsRequest.SerializeToString,
            response_deserializer=common_pb2.ListJobsResponse.FromString,
        )(common_pb2.ListJobsRequest(page_size=5), metadata=md, timeout=30)
        return [j.id for j in listed.jobs]
    return []
