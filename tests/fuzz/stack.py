"""The servers the RPC fuzz test calls: tracker, compiler, trainer and the authz service as
real processes on one database and a Redis of their own, no workers (queued jobs stay queued),
callers with real signed tokens, and a few real records whose ids and names the generated
requests can use."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from neural.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from service_kit.auth import Principal
from service_kit.internal_token import Signer, load_private_key

from gateway.authz.app import API_AUDIENCE, API_TOKEN_SECONDS
from tests import tokens
from tests.services.trainer_stack import TrainerStack, make_trainer_stack

SERVICES = ("tracker", "compiler", "trainer")
SERVERS = (*SERVICES, "authz")  # what the fuzz test starts and calls
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
        else:
            stack.start_service(name)
            stack.wait_service(name)
    return stack


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
