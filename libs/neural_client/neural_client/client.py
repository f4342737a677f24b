"""`Client`: the platform's API through the gateway, as typed helpers over the gRPC stubs."""

from __future__ import annotations

import hashlib
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
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

from .channel import DEFAULT_URL, open_channel
from .errors import MissingKeyError, NeuralError
from .run import Run

T = TypeVar("T")

BACKENDS = {
    "pytorch": compiler_pb2.BACKEND_PYTORCH,
    "tensorflow": compiler_pb2.BACKEND_TENSORFLOW,
    "onnx": compiler_pb2.BACKEND_ONNX,
}
TRAINING_BACKENDS = {
    "pytorch": trainer_pb2.TRAINING_BACKEND_PYTORCH,
    "tensorflow": trainer_pb2.TRAINING_BACKEND_TENSORFLOW,
}
DATASETS = {
    "digits": trainer_pb2.BUILTIN_DATASET_DIGITS,
    "iris": trainer_pb2.BUILTIN_DATASET_IRIS,
    "wine": trainer_pb2.BUILTIN_DATASET_WINE,
    "breast_cancer": trainer_pb2.BUILTIN_DATASET_BREAST_CANCER,
}
ROLES = {"admin": auth_pb2.ROLE_ADMIN, "user": auth_pb2.ROLE_USER, "viewer": auth_pb2.ROLE_VIEWER}
JOB_KINDS = ("training", "compile", "rollout")
TERMINAL = {
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
}
UNARY_TIMEOUT_S = 120.0


def _call(fn: Callable[..., T], request: Any, metadata: Any, timeout: float | None) -> T:
    try:
        return fn(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as exc:
        raise NeuralError.from_rpc(exc) from None


def _stream(fn: Callable[..., Iterator[T]], request: Any, metadata: Any) -> Iterator[T]:
    try:
        yield from fn(request, metadata=metadata)
    except grpc.RpcError as exc:
        raise NeuralError.from_rpc(exc) from None


def _pick(table: dict[str, T], name: str, what: str) -> T:
    try:
        return table[name]
    except KeyError:
        raise NeuralError(f"unknown {what} {name!r}: one of {', '.join(table)}") from None


def to_tensor(array: np.ndarray) -> deployer_pb2.Tensor:
    """A typed tensor: integers as int64, everything else as float32."""
    array = np.asarray(array)
    if array.dtype.kind in "iub":
        data = array.astype(np.int64)
        return deployer_pb2.Tensor(shape=data.shape, dtype="int64", int64_data=data.ravel())
    if array.dtype.kind != "f":
        raise NeuralError(f"the input must hold numbers, not {array.dtype}")
    data = array.astype(np.float32)
    return deployer_pb2.Tensor(shape=data.shape, dtype="float32", float_data=data.ravel())


def from_tensor(tensor: deployer_pb2.Tensor) -> np.ndarray:
    if tensor.dtype == "int64":
        data = np.asarray(tensor.int64_data, dtype=np.int64)
    else:
        data = np.asarray(tensor.float_data, dtype=np.float32)
    return data.reshape(tuple(tensor.shape))


class Client:
    """The platform through its gateway: `NEURAL_URL` (default 127.0.0.1:8080) and
    `NEURAL_API_KEY` unless given. Every failure is a `NeuralError`."""

    def __init__(self, url: str | None = None, api_key: str | None = None) -> None:
        self.url = url or os.environ.get("NEURAL_URL") or DEFAULT_URL
        key = api_key or os.environ.get("NEURAL_API_KEY", "").strip()
        if not key:
            raise MissingKeyError()
        self.metadata = (("authorization", f"Bearer {key}"),)
        try:
            self.channel = open_channel(self.url)
        except ValueError as exc:
            raise NeuralError(str(exc)) from None
        self.compiler = compiler_pb2_grpc.CompilerServiceStub(self.channel)
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self.channel)
        self.tracker = tracker_pb2_grpc.TrackerServiceStub(self.channel)
        self.deployer = deployer_pb2_grpc.DeployerServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self._runs: weakref.WeakSet[Run] = weakref.WeakSet()

    def close(self) -> None:
        """Closes the runs opened through this client first, sending their points."""
        try:
            for run in list(self._runs):
                run.close()
        finally:
            self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unary(self, fn: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        return _call(fn, request, self.metadata, timeout or UNARY_TIMEOUT_S)

    # ---- compiler ------------------------------------------------------------------------

    def validate(self, source: str) -> compiler_pb2.ValidateResponse:
        return self._unary(self.compiler.Validate, compiler_pb2.ValidateRequest(source=source))

    def compile(
        self, source: str, backend: str = "pytorch", name: str = "", out: Path | None = None
    ) -> compiler_pb2.CompileResponse:
        """Compile `source`; with `out`, the model's file (code or ONNX) is written there."""
        request = compiler_pb2.CompileRequest(
            source=source, backend=_pick(BACKENDS, backend, "backend"), name=name
        )
        answer = self._unary(self.compiler.Compile, request)
        if out is not None:
            self.download_model(answer.model.id, out)
        return answer

    def download_model(self, model_id: str, out: Path) -> Path:
        """The model's file, checked against the sha256 its last chunk carries."""
        chunks = _stream(
            self.compiler.DownloadModel,
            compiler_pb2.DownloadModelRequest(id=model_id),
            self.metadata,
        )
        digest = hashlib.sha256()
        expected = ""
        out = Path(out)
        partial = out.with_name(out.name + ".part")
        with partial.open("wb") as f:
            for chunk in chunks:
                f.write(chunk.data)
                digest.update(chunk.data)
                expected = chunk.sha256 or expected
        if expected and expected != digest.hexdigest():
            partial.unlink(missing_ok=True)
            raise NeuralError(f"model {model_id}: the download does not match its sha256")
        partial.replace(out)
        return out

    def get_model(self, model_id: str) -> compiler_pb2.Model:
        return self._unary(self.compiler.GetModel, compiler_pb2.GetModelRequest(id=model_id))

    # ---- training and jobs ---------------------------------------------------------------

    def submit_training(
        self,
        source: str | None = None,
        *,
        model_id: str | None = None,
        dataset: str = "digits",
        epochs: int | None = None,
        batch_size: int | None = None,
        experiment: str = "",
        backend: str | None = None,
    ) -> common_pb2.Job:
        """A training job on a built-in dataset, for a program's source or a compiled model."""
        if (source is None) == (model_id is None):
            raise NeuralError("give exactly one of source and model_id")
        request = trainer_pb2.SubmitTrainingRequest(
            dataset=trainer_pb2.DatasetSpec(builtin=_pick(DATASETS, dataset, "dataset")),
            experiment=experiment,
        )
        if source is not None:
            request.source = source
        else:
            request.model_id = model_id or ""
        if backend:
            request.backend = _pick(TRAINING_BACKENDS, backend, "training backend")
        if epochs is not None:
            request.epochs = epochs
        if batch_size is not None:
            request.batch_size = batch_size
        return self._unary(self.trainer.SubmitTraining, request)

    def _jobs(self, kind: str) -> tuple[Any, str]:
        stubs = {"training": (self.trainer, "Training"), "compile": (self.compiler, "Compile")}
        stubs["rollout"] = (self.deployer, "Rollout")
        return _pick(stubs, kind, "job kind")

    def get_job(self, job_id: str, kind: str = "training") -> common_pb2.Job:
        stub, noun = self._jobs(kind)
        return self._unary(getattr(stub, f"Get{noun}Job"), common_pb2.GetJobRequest(id=job_id))

    def list_jobs(self, kind: str = "training", page_size: int = 50) -> list[common_pb2.Job]:
        stub, noun = self._jobs(kind)
        request = common_pb2.ListJobsRequest(page_size=page_size)
        return list(self._unary(getattr(stub, f"List{noun}Jobs"), request).jobs)

    def cancel_job(self, job_id: str, kind: str = "training") -> common_pb2.Job:
        stub, noun = self._jobs(kind)
        request = common_pb2.CancelJobRequest(id=job_id)
        return self._unary(getattr(stub, f"Cancel{noun}Job"), request)

    def watch(self, job_id: str, kind: str = "training") -> Iterator[common_pb2.JobEvent]:
        """The job's events until it ends (its last event carries the final job)."""
        stub, noun = self._jobs(kind)
        request = common_pb2.WatchJobRequest(id=job_id)
        yield from _stream(getattr(stub, f"Watch{noun}Job"), request, self.metadata)

    # ---- tracker -------------------------------------------------------------------------

    def experiments(self, name: str = "") -> list[tracker_pb2.Experiment]:
        found: list[tracker_pb2.Experiment] = []
        token = ""
        while True:
            request = tracker_pb2.ListExperimentsRequest(page_size=100, page_token=token, name=name)
            page = self._unary(self.tracker.ListExperiments, request)
            found += page.experiments
            token = page.next_page_token
            if not token:
                return found

    def experiment_id(self, name: str) -> str:
        for experiment in self.experiments(name):
            if experiment.name == name or experiment.id == name:
                return experiment.id
        raise NeuralError(f"no experiment named {name!r}", grpc.StatusCode.NOT_FOUND)

    def runs(
        self,
        experiment: str | None = None,
        filter: str = "",
        order_by: tuple[str, ...] = (),
        limit: int = 50,
    ) -> list[tracker_pb2.Run]:
        ids = [self.experiment_id(experiment)] if experiment else []
        request = tracker_pb2.SearchRunsRequest(
            experiment_ids=ids, filter=filter, order_by=list(order_by), page_size=limit
        )
        return list(self._unary(self.tracker.SearchRuns, request).runs)

    def get_run(self, run_id: str) -> tracker_pb2.Run:
        return self._unary(self.tracker.GetRun, tracker_pb2.GetRunRequest(id=run_id))

    def compare_runs(
        self, run_ids: list[str], metric_keys: list[str] | None = None
    ) -> tracker_pb2.CompareRunsResponse:
        request = tracker_pb2.CompareRunsRequest(run_ids=run_ids, metric_keys=metric_keys or [])
        return self._unary(self.tracker.CompareRuns, request)

    def start_run(
        self,
        experiment: str,
        name: str = "",
        tags: Mapping[str, str] | None = None,
        **options: Any,
    ) -> Run:
        """A new RUNNING run in `experiment` (its name, created when missing), as a `Run` to
        log to; `options` are Run's (max_buffer, flush_interval, block_timeout, rpc_timeout)."""
        request = tracker_pb2.CreateRunRequest(
            experiment_id=self._experiment_for_run(experiment),
            run=tracker_pb2.Run(name=name, tags=dict(tags or {})),
        )
        run = self._unary(self.tracker.CreateRun, request)
        return self._open(Run(self.tracker, self.metadata, run, owned=True, **options))

    def run(self, run_id: str, **options: Any) -> Run:
        """A `Run` for an existing run (e.g. a training job's), to log more to it."""
        return self._open(Run(self.tracker, self.metadata, self.get_run(run_id), **options))

    def _open(self, run: Run) -> Run:
        self._runs.add(run)
        return run

    def _experiment_for_run(self, name: str) -> str:
        try:
            return self.experiment_id(name)
        except NeuralError as err:
            if err.code != grpc.StatusCode.NOT_FOUND:
                raise
        request = tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=name))
        try:
            return self._unary(self.tracker.CreateExperiment, request).id
        except NeuralError as err:
            # Another process created it meanwhile; or a deleted experiment holds the name,
            # and the error says so.
            if err.code != grpc.StatusCode.ALREADY_EXISTS:
                raise
            try:
                return self.experiment_id(name)
            except NeuralError:
                raise err from None

    def metric_history(self, run_id: str, key: str) -> list[tracker_pb2.Metric]:
        points: list[tracker_pb2.Metric] = []
        token = ""
        while True:
            request = tracker_pb2.GetMetricHistoryRequest(
                run_id=run_id, key=key, page_size=1000, page_token=token
            )
            page = self._unary(self.tracker.GetMetricHistory, request)
            points += page.metrics
            token = page.next_page_token
            if not token:
                return points

    def plot(
        self, run_ids: list[str], keys: list[str], x_axis: str = "step", out: Path | None = None
    ) -> bytes:
        """The tracker's PNG of the runs' curves (one panel per key)."""
        request = tracker_pb2.PlotMetricsRequest(run_ids=run_ids, keys=keys, x_axis=x_axis)
        png = self._unary(self.tracker.PlotMetrics, request).png
        if out is not None:
            Path(out).write_bytes(png)
        return png

    # ---- deployer ------------------------------------------------------------------------

    def deploy(
        self, run_id: str, name: str = "", path: str = "model.onnx"
    ) -> deployer_pb2.Deployment:
        """Serve a run's ONNX artifact; `wait_ready` waits for it."""
        deployment = deployer_pb2.Deployment(
            name=name or f"run-{run_id[:8]}",
            run_artifact=deployer_pb2.RunArtifactRef(run_id=run_id, path=path),
        )
        request = deployer_pb2.CreateDeploymentRequest(deployment=deployment)
        return self._unary(self.deployer.CreateDeployment, request)

    def get_deployment(self, deployment: str) -> deployer_pb2.Deployment:
        """A deployment by id or name."""
        request = deployer_pb2.GetDeploymentRequest(id=deployment)
        return self._unary(self.deployer.GetDeployment, request)

    def deployments(self) -> list[deployer_pb2.Deployment]:
        request = deployer_pb2.ListDeploymentsRequest(page_size=100)
        return list(self._unary(self.deployer.ListDeployments, request).deployments)

    def wait_ready(
        self, deployment: str, timeout_s: float = 300.0, poll_s: float = 0.5
    ) -> deployer_pb2.Deployment:
        """Polls until a replica is ready; FAILED or the timeout is a NeuralError (with no
        gRPC code: the platform answered, the model did not become ready)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.get_deployment(deployment)
            if found.ready_replicas >= 1 and found.state == deployer_pb2.DEPLOYMENT_STATE_READY:
                return found
            if found.state == deployer_pb2.DEPLOYMENT_STATE_FAILED:
                raise NeuralError(f"deployment {found.name} failed: {found.error}")
            if time.monotonic() >= deadline:
                raise NeuralError(
                    f"deployment {found.name} not ready after {timeout_s:g} s "
                    f"({deployer_pb2.DeploymentState.Name(found.state)}; "
                    f"`neural deployments get {found.name}` says why)"
                )
            time.sleep(poll_s)

    def scale(self, deployment: str, replicas: int) -> deployer_pb2.Deployment:
        request = deployer_pb2.ScaleDeploymentRequest(id=deployment, replicas=replicas)
        return self._unary(self.deployer.ScaleDeployment, request)

    def delete_deployment(self, deployment: str) -> deployer_pb2.Deployment:
        request = deployer_pb2.DeleteDeploymentRequest(id=deployment)
        return self._unary(self.deployer.DeleteDeployment, request)

    def predict_response(self, deployment: str, array: np.ndarray) -> deployer_pb2.PredictResponse:
        request = deployer_pb2.PredictRequest(id=deployment, inputs=[to_tensor(array)])
        return self._unary(self.deployer.Predict, request)

    def predict(self, deployment: str, array: np.ndarray) -> np.ndarray:
        """The model's first output for `array` (a batch: one row per example)."""
        answer = self.predict_response(deployment, array)
        if not answer.outputs:
            raise NeuralError(f"deployment {deployment} answered no output")
        return from_tensor(answer.outputs[0])

    # ---- keys ----------------------------------------------------------------------------

    def create_key(self, name: str, role: str = "user") -> auth_pb2.CreateApiKeyResponse:
        request = auth_pb2.CreateApiKeyRequest(name=name, role=_pick(ROLES, role, "role"))
        return self._unary(self.auth.CreateApiKey, request)

    def keys(self, include_revoked: bool = False) -> list[auth_pb2.ApiKey]:
        request = auth_pb2.ListApiKeysRequest(page_size=100, include_revoked=include_revoked)
        return list(self._unary(self.auth.ListApiKeys, request).api_keys)

    def revoke_key(self, key_id: str) -> auth_pb2.ApiKey:
        return self._unary(self.auth.RevokeApiKey, auth_pb2.RevokeApiKeyRequest(id=key_id))
