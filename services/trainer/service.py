"""TrainerService: training and search jobs, datasets and workers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import redis.asyncio as aioredis
from google.protobuf import empty_pb2, json_format
from neural.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    tracker_pb2,
    trainer_pb2,
    trainer_pb2_grpc,
)
from neural_dsl import DSLError, Limits
from service_kit import errors, job_messages, owners, pagination, request_checks
from service_kit.heartbeat import list_workers
from service_kit.interceptors import forwarded_credentials, principal
from service_kit.jobs import JobRecord, JobStore
from service_kit.redis_clients import async_client
from service_kit.roles import service_roles
from service_kit.streams import StreamCap
from service_kit.tasks import Sendable

from . import dataset_store, datasets, plan
from .dataset_store import DatasetStore
from .datasets import DatasetError
from .plan import TrainingRequest

SERVICE = "neural.v1.TrainerService"
BACKENDS = {
    trainer_pb2.TRAINING_BACKEND_UNSPECIFIED: "pytorch",
    trainer_pb2.TRAINING_BACKEND_PYTORCH: "pytorch",
    trainer_pb2.TRAINING_BACKEND_TENSORFLOW: "tensorflow",
}
BUILTINS = {
    trainer_pb2.BUILTIN_DATASET_DIGITS: "digits",
    trainer_pb2.BUILTIN_DATASET_IRIS: "iris",
    trainer_pb2.BUILTIN_DATASET_WINE: "wine",
    trainer_pb2.BUILTIN_DATASET_BREAST_CANCER: "breast_cancer",
}
MAX_TRIALS = 1000
WORKERS = "trainer_workers"  # the listing of ListWorkers' page tokens

METHOD_ROLES = service_roles(SERVICE)  # declared in the protos


def _bad(field: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {why}", [errors.FieldViolation(field, why)])


class TrainerService(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(
        self,
        jobs: JobStore,
        store: DatasetStore,
        limits: Limits,
        actors: dict[str, Sendable],
        compiler_address: str,
        redis_url: str,
        validate_webhooks: Callable[[Any], list[dict[str, Any]]],
        deliveries: Callable[[str], Any],
        max_watches_per_principal: int = 20,
    ) -> None:
        self.jobs = jobs
        self.watches = StreamCap(max_watches_per_principal)
        self.store = store
        self.limits = limits
        self.actors = actors
        self.compiler_address = compiler_address
        self.redis = async_client(
            redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=1
        )
        self.validate_webhooks = validate_webhooks
        self.deliveries = deliveries

    # ---------------------------------------------------------- requests
    async def _model_source(self, model_id: str, context: Any) -> tuple[str, str, dict]:
        """A registry model's program, fetched from the compiler as the caller."""
        auth = forwarded_credentials(context)
        async with grpc.aio.insecure_channel(self.compiler_address) as channel:
            stub = compiler_pb2_grpc.CompilerServiceStub(channel)
            try:
                model = await stub.GetModel(
                    compiler_pb2.GetModelRequest(id=model_id), metadata=auth, timeout=10
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    raise errors.NotFound(f"no model {errors.shown(model_id)}") from None
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    raise errors.PermissionDenied(exc.details() or "") from None
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise errors.Unauthenticated(exc.details() or "") from None
                raise errors.Unavailable(f"the compiler is unavailable: {exc.details()}") from exc
        return model.source, model.network, json_format.MessageToDict(model.hparams)

    async def _dataset(self, spec: trainer_pb2.DatasetSpec) -> tuple[dict, tuple, int]:
        """The dataset as stored on the job, its sample shape (None: from the network) and
        class count, checked."""
        which = spec.WhichOneof("source")
        if which == "builtin":
            name = BUILTINS.get(spec.builtin)
            if name is None:
                raise _bad(
                    "dataset.builtin", f"one of {', '.join(b.upper() for b in plan.BUILTIN)}"
                )
            data = await asyncio.to_thread(datasets.builtin, name)
            return {"builtin": name}, data.x.shape[1:], data.num_classes
        if which == "synthetic":
            s = spec.synthetic
            if not 1 <= s.num_samples <= datasets.MAX_SAMPLES:
                raise _bad("dataset.synthetic.num_samples", f"between 1 and {datasets.MAX_SAMPLES}")
            if not 2 <= s.num_classes <= datasets.MAX_CLASSES:
                raise _bad("dataset.synthetic.num_classes", f"between 2 and {datasets.MAX_CLASSES}")
            stored = {"num_samples": s.num_samples, "num_classes": s.num_classes, "seed": s.seed}
            return {"synthetic": stored}, (), s.num_classes
        if which == "dataset_id":
            record = await self.store.get(spec.dataset_id, principal().subject)
            # the class count is known once loaded: the worker checks it
            return {"dataset_id": record.id}, tuple(record.shapes["x"][1:]), 0
        raise _bad("dataset", "required: builtin, synthetic or dataset_id")

    async def _request(self, request: Any, context: Any, search: bool) -> TrainingRequest:
        which = request.WhichOneof("model")
        if which is None:
            raise _bad("model", "required: model_id or source")
        if which == "source":
            if not request.source.strip():
                raise _bad("source", "must not be empty")
            if len(request.source.encode()) > self.limits.max_source_bytes:
                raise _bad("source", f"over {self.limits.max_source_bytes} bytes")
            source, network, hparams = request.source, request.network, {}
        else:
            source, network, hparams = await self._model_source(request.model_id, context)
            network = request.network or network
        backend = BACKENDS.get(request.backend)
        if backend is None:
            raise _bad("backend", "PYTORCH or TENSORFLOW")
        if len(request.experiment) > 200:
            raise _bad("experiment", "at most 200 characters")
        epochs = request.epochs if request.HasField("epochs") else None
        if epochs is not None and not 1 <= epochs <= 10_000:
            raise _bad("epochs", "between 1 and 10000")
        req = TrainingRequest(
            source=source,
            backend=backend,
            dataset={},
            network=network,
            model_id=request.model_id,
            epochs=epochs,
            experiment=request.experiment or plan.DEFAULT_EXPERIMENT,
            webhooks=self.validate_webhooks(request.webhooks),
        )
        if search:
            self._search_fields(request, req)
        else:
            self._training_fields(request, req, hparams)
        req.dataset, shape, classes = await self._dataset(request.dataset)
        await asyncio.to_thread(self._check_program, req, shape, classes)
        return req

    @staticmethod
    def _training_fields(request: Any, req: TrainingRequest, hparams: dict) -> None:
        if request.HasField("batch_size"):
            if not 1 <= request.batch_size <= 65_536:
                raise _bad("batch_size", "between 1 and 65536")
            req.batch_size = request.batch_size
        if request.HasField("learning_rate"):
            lr = request.learning_rate
            if not (math.isfinite(lr) and 0 < lr <= 10):
                raise _bad("learning_rate", "a number in (0, 10]")
            req.learning_rate = lr
        if request.HasField("validation_split"):
            if not 0 <= request.validation_split < 1:
                raise _bad("validation_split", "in [0, 1)")
            req.validation_split = request.validation_split
        req.hparams = hparams | request_checks.struct_values(request.hparams, "hparams")

    @staticmethod
    def _search_fields(request: Any, req: TrainingRequest) -> None:
        if not 1 <= request.n_trials <= MAX_TRIALS:
            raise _bad("n_trials", f"between 1 and {MAX_TRIALS}")
        if not request.objective or len(request.objective) > 200:
            raise _bad("objective", "the metric to optimize, e.g. val_accuracy")
        req.n_trials = request.n_trials
        req.objective = request.objective
        if request.direction == tracker_pb2.OPTIMIZATION_DIRECTION_UNSPECIFIED:
            lower = any(w in request.objective.lower() for w in ("loss", "error"))
            req.direction = "minimize" if lower else "maximize"
        else:
            minimize = request.direction == tracker_pb2.OPTIMIZATION_DIRECTION_MINIMIZE
            req.direction = "minimize" if minimize else "maximize"

    def _check_program(self, req: TrainingRequest, shape: tuple, classes: int) -> None:
        try:
            network = plan.network_of(req.source, req.network, self.limits)
            if req.n_trials:
                if not network.hpo_params():
                    raise DatasetError("the program has no HPO(...) parameters to search over")
                from neural_dsl.hparams import first_values

                hparams = first_values(network)
            else:
                hparams = req.hparams
            sample = shape or plan.synthetic_shape(network)
            resolved = plan.check_fit(
                network, req.backend, hparams, tuple(sample), classes, self.limits
            )
            plan.check_budget(resolved, req, tuple(sample), self.limits)
        except DSLError as exc:
            raise errors.program_invalid(exc) from None
        except plan.OverLimit as exc:
            raise _bad(exc.field, str(exc)) from None
        except DatasetError as exc:
            raise _bad("dataset", str(exc)) from None

    async def _submit(self, kind: str, req: TrainingRequest, actor_name: str) -> common_pb2.Job:
        rec = await self.jobs.create(kind, principal().subject, req.to_json())
        await self.jobs.enqueue(rec, self.actors[actor_name])
        return job_messages.job(rec)

    async def _get(self, job_id: str, kind: str) -> JobRecord:
        rec = await self.jobs.get(job_id, owners.scope())
        if rec.kind != kind:
            raise errors.NotFound(f"no {kind} job {errors.shown(job_id)}")
        return rec

    async def _message(self, rec: JobRecord) -> common_pb2.Job:
        return job_messages.job(rec, await self.deliveries(rec.id))

    async def _list(self, request: Any, kind: str) -> common_pb2.ListJobsResponse:
        state = job_messages.JOB_STATE_NAMES.get(request.state) if request.state else None
        records, token = await self.jobs.list(
            owners.scope(), request.page_size, request.page_token, state, kind
        )
        return common_pb2.ListJobsResponse(
            jobs=[job_messages.job(r) for r in records], next_page_token=token
        )

    async def _watch(self, job_id: str, kind: str) -> AsyncIterator[common_pb2.JobEvent]:
        await self._get(job_id, kind)
        with self.watches.hold(principal().subject):  # one caller cannot hold them all
            async for event, message, rec in self.jobs.watch(job_id, owners.scope()):
                yield job_messages.event(rec, event, message)

    # ---------------------------------------------------------- training jobs
    async def SubmitTraining(self, request: Any, context: Any) -> common_pb2.Job:
        req = await self._request(request, context, search=False)
        return await self._submit("training", req, "train_model")

    async def GetTrainingJob(self, request: Any, context: Any) -> common_pb2.Job:
        return await self._message(await self._get(request.id, "training"))

    async def ListTrainingJobs(self, request: Any, context: Any) -> Any:
        return await self._list(request, "training")

    async def CancelTrainingJob(self, request: Any, context: Any) -> common_pb2.Job:
        await self._get(request.id, "training")
        return await self._message(await self.jobs.cancel(request.id, owners.scope()))

    async def WatchTrainingJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for event in self._watch(request.id, "training"):
            yield event

    # ---------------------------------------------------------- search jobs
    async def SubmitSearch(self, request: Any, context: Any) -> common_pb2.Job:
        req = await self._request(request, context, search=True)
        return await self._submit("search", req, "search_model")

    async def GetSearchJob(self, request: Any, context: Any) -> common_pb2.Job:
        return await self._message(await self._get(request.id, "search"))

    async def ListSearchJobs(self, request: Any, context: Any) -> Any:
        return await self._list(request, "search")

    async def CancelSearchJob(self, request: Any, context: Any) -> common_pb2.Job:
        await self._get(request.id, "search")
        return await self._message(await self.jobs.cancel(request.id, owners.scope()))

    async def WatchSearchJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        async for event in self._watch(request.id, "search"):
            yield event

    # ---------------------------------------------------------- datasets
    async def UploadDataset(self, request_iterator: Any, context: Any) -> Any:
        record = await self.store.upload(principal().subject, request_iterator)
        return dataset_store.to_message(record)

    async def ListDatasets(self, request: Any, context: Any) -> Any:
        records, token = await self.store.list(
            owners.scope(), request.page_size, request.page_token, request.name
        )
        return trainer_pb2.ListDatasetsResponse(
            datasets=[dataset_store.to_message(r) for r in records], next_page_token=token
        )

    async def GetDataset(self, request: Any, context: Any) -> Any:
        return dataset_store.to_message(await self.store.get(request.id, owners.scope()))

    async def DeleteDataset(self, request: Any, context: Any) -> Any:
        record = await self.store.get(request.id, owners.scope())
        await self.store.delete(record.id, owners.scope(), await self._dataset_in_use(record.id))
        return empty_pb2.Empty()

    async def _dataset_in_use(self, dataset_id: str) -> bool:
        for state in ("queued", "running"):
            token = ""
            while True:
                records, token = await self.jobs.list(None, 1000, token, state)
                if any(
                    r.request.get("dataset", {}).get("dataset_id") == dataset_id for r in records
                ):
                    return True
                if not token:
                    break
        return False

    # ---------------------------------------------------------- workers
    async def ListWorkers(self, request: Any, context: Any) -> Any:
        size = pagination.page_size(request.page_size)
        bound_to = (request.include_dead,)  # the token's context
        (start,) = pagination.decode(
            request.page_token, WORKERS, (pagination.OFFSET,), bound_to
        ) or (0,)
        try:
            workers = await list_workers(self.redis, include_dead=request.include_dead)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as exc:
            raise errors.Unavailable("Redis is unavailable") from exc
        page = workers[start : start + size]
        return trainer_pb2.ListWorkersResponse(
            workers=[
                trainer_pb2.Worker(
                    id=w.id,
                    hostname=w.hostname,
                    pid=w.pid,
                    queues=w.queues,
                    last_heartbeat_time=job_messages.timestamp_from_epoch(w.last_beat),
                    alive=w.alive,
                    in_flight_job_ids=w.in_flight,
                )
                for w in page
            ],
            next_page_token=pagination.encode(WORKERS, (start + size,), bound_to)
            if start + size < len(workers)
            else "",
        )
