"""DeployerService: deployments of ONNX models, their scale, and JSON-friendly predictions.

The server keeps the desired state (rows); the controller (services.deployer.controller)
makes it so with replica processes and reports back. A change the controller should act on
at once is announced on Redis (`NUDGE`); it also polls, so a lost nudge only costs latency.

A rollout is a job (kind "rollout", the kit's JobStore and webhooks) that the controller moves
through its lifecycle (controller/rollouts.py); this server creates it and serves it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from inference import grpc_predict_v2_pb2 as oip
from inference import grpc_predict_v2_pb2_grpc as oip_grpc
from neural.v1 import common_pb2, deployer_pb2, deployer_pb2_grpc
from service_kit import errors, owners, webhooks
from service_kit import job_messages as convert_jobs
from service_kit.interceptors import forwarded_credentials, principal
from service_kit.jobs import JobRecord, JobStore
from service_kit.lifecycle import Lifecycle
from service_kit.redis_clients import async_client
from service_kit.roles import service_roles
from service_kit.settings import _int as env_int
from service_kit.streams import StreamCap

from . import manifests, spec
from . import oip as convert
from .load import InFlight
from .models import ModelFetcher, remove_files, remove_version_files
from .replica_host import replica_host
from .spec import bad
from .store import PENDING, READY, DeployerStore, Replica, Version, new_id

SERVICE = "neural.v1.DeployerService"
NUDGE = "neural:deployer:nudge"  # the Redis channel the controller listens on
FIRST_VERSION = "v1"
PREDICT_TIMEOUT = 30
ROLLOUT = "rollout"  # the kind of the deployer's jobs
WAKE_POLL_S = 0.1  # how often a prediction waiting for a replica looks for a ready one
ATTEMPTS = 3  # replicas tried when one is unreachable (e.g. it has just died)
# A replica's answers that are the caller's mistake, passed on as they are.
CALLER_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
}

METHOD_ROLES = service_roles(SERVICE)  # declared in the protos
log = logging.getLogger("neural.deployer")


class DeployerService(deployer_pb2_grpc.DeployerServiceServicer):
    def __init__(
        self,
        store: DeployerStore,
        fetcher: ModelFetcher,
        redis_url: str,
        jobs: JobStore,
        max_watches_per_principal: int = 20,
    ) -> None:
        self.store = store
        self.fetcher = fetcher
        self.jobs = jobs
        self.watches = StreamCap(max_watches_per_principal)
        # the longest a prediction waits for a deployment scaled to zero to have a replica
        self.cold_start_s = env_int("NEURAL_DEPLOYER_COLD_START_S", 60, 1, 3600)
        self.redis = async_client(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.channels: dict[int, grpc.aio.Channel] = {}
        self.replica_host = replica_host()  # the controller's replicas, by DNS name
        # (deployment id, version) -> the model's inputs as (name, OIP datatype)
        self.inputs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.inflight = InFlight()  # the autoscaler's signal (load.py)

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        await self.redis.aclose()

    async def _nudge(self) -> None:
        with contextlib.suppress(Exception):  # the controller polls anyway
            await self.redis.publish(NUDGE, "1")

    # ---------------------------------------------------------- deployments
    async def CreateDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        d = request.deployment
        columns = spec.settings(d)
        src = spec.source(d)
        if await self.store.name_taken(d.name):
            raise errors.AlreadyExists(f"a deployment named {errors.shown(d.name)} exists")
        deployment_id = new_id()
        path = await self.fetcher.fetch(
            src, deployment_id, FIRST_VERSION, forwarded_credentials(context)
        )
        version = {
            "id": new_id(),
            "version": FIRST_VERSION,
            "run_id": src.run_id,
            "artifact_path": src.artifact_path,
            "model_id": src.model_id,
            "model_path": str(path),
            "traffic_percent": 100,
        }
        try:
            created = await self.store.create(
                {"id": deployment_id, "owner": principal().subject, **columns}, version
            )
        except BaseException:
            remove_files(self.fetcher.storage, deployment_id)
            raise
        await self._nudge()
        return spec.to_proto(created)

    async def ListDeployments(self, request: Any, context: Any) -> Any:
        state = spec.STATE_NAMES.get(request.state) if request.state else None
        found, token = await self.store.list(
            owners.scope(), state, request.page_token, request.page_size
        )
        return deployer_pb2.ListDeploymentsResponse(
            deployments=[spec.to_proto(d) for d in found], next_page_token=token
        )

    async def GetDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        return spec.to_proto(await self.store.get(request.id, owners.scope()))

    async def DeleteDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        found = await self.store.mark_deleting(request.id, owners.scope())
        await self._nudge()
        return spec.to_proto(found)

    async def ScaleDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        replicas = spec.check_replicas(request.replicas)
        found = await self.store.get(request.id, owners.scope())
        if found.max_replicas and not found.min_replicas <= replicas <= found.max_replicas:
            raise bad(
                "replicas",
                f"between min_replicas ({found.min_replicas}) and max_replicas "
                f"({found.max_replicas}), got {replicas}",
            )
        scaled = await self.store.scale(found.id, owners.scope(), replicas)
        await self._nudge()
        return spec.to_proto(scaled)

    # ---------------------------------------------------------- rollouts
    async def RolloutDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        traffic = request.traffic_percent
        if not 1 <= traffic <= 100:
            raise bad("traffic_percent", f"between 1 and 100, got {traffic}")
        src = spec.source(request, prefix="")
        hooks = webhooks.validate(request.webhooks)
        found, version = await self.store.next_version(request.id, owners.scope())
        path = await self.fetcher.fetch(
            src, found.id, version, forwarded_credentials(context), keep_others=True
        )
        # the deployment's owner's job: whoever sees the deployment sees its rollouts
        job = await self.jobs.create(
            ROLLOUT,
            found.owner,
            {
                "deployment_id": found.id,
                "deployment": found.name,
                "version": version,
                "traffic_percent": traffic,
                "run_id": src.run_id,
                "artifact_path": src.artifact_path,
                "model_id": src.model_id,
                "webhooks": hooks,
            },
        )
        row = {
            "id": new_id(),
            "version": version,
            "run_id": src.run_id,
            "artifact_path": src.artifact_path,
            "model_id": src.model_id,
            "model_path": str(path),
            "traffic_percent": traffic,
            "rollout_job_id": job.id,
        }
        try:
            updated = await self.store.rollout(found, row)
        except BaseException as exc:
            remove_version_files(self.fetcher.storage, found.id, version)
            with contextlib.suppress(Exception):  # the job ends with the reason it never ran
                await Lifecycle(self.jobs, job.id, 1).fail(str(exc) or type(exc).__name__)
            raise
        await self._nudge()
        return spec.to_proto(updated)

    async def PromoteDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        promoted = await self.store.promote(request.id, owners.scope())
        await self._nudge()
        return spec.to_proto(promoted)

    async def RollbackDeployment(self, request: Any, context: Any) -> deployer_pb2.Deployment:
        rolled_back = await self.store.promote(request.id, owners.scope(), back=True)
        await self._nudge()
        return spec.to_proto(rolled_back)

    # ---------------------------------------------------------- rollout jobs
    async def _jobs(self, records: list[JobRecord], per_job: int = 50) -> list[common_pb2.Job]:
        found = await self.jobs.deliveries([r.id for r in records], per_job)
        return [
            convert_jobs.job(r, [webhooks.to_proto(d) for d in found.get(r.id, [])])
            for r in records
        ]

    async def GetRolloutJob(self, request: Any, context: Any) -> common_pb2.Job:
        return (await self._jobs([await self.jobs.get(request.id, owners.scope())]))[0]

    async def ListRolloutJobs(self, request: Any, context: Any) -> common_pb2.ListJobsResponse:
        state = convert_jobs.JOB_STATE_NAMES.get(request.state) if request.state else None
        records, token = await self.jobs.list(
            owners.scope(), request.page_size, request.page_token, state, ROLLOUT
        )
        return common_pb2.ListJobsResponse(
            jobs=await self._jobs(records, per_job=10), next_page_token=token
        )

    async def WatchRolloutJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        with self.watches.hold(principal().subject):  # one caller cannot hold them all
            async for event, message, rec in self.jobs.watch(request.id, owners.scope()):
                found = (await self.jobs.deliveries([rec.id])).get(rec.id, [])
                yield convert_jobs.event(rec, event, message, [webhooks.to_proto(d) for d in found])

    async def RenderManifests(self, request: Any, context: Any) -> Any:
        found = await self.store.get(request.id, owners.scope())
        rendered = manifests.render_manifests(spec.manifest_spec(found, dict(os.environ)))
        return deployer_pb2.RenderManifestsResponse(yaml=rendered)

    # ---------------------------------------------------------- predictions
    async def Predict(self, request: Any, context: Any) -> deployer_pb2.PredictResponse:
        found = await self.store.get(request.id, owners.scope())
        autoscaled = found.max_replicas > 0
        if found.state != READY and not (found.state == PENDING and autoscaled):
            raise errors.FailedPrecondition(
                f"deployment {errors.shown(found.name)} is {found.state}, not READY"
                + (f": {found.error}" if found.error else "")
            )
        # counted from here: a prediction waiting for a replica is load the autoscaler sees
        with self.inflight.track(found.id):
            ready = await self.store.ready_replicas(found.id)
            if not ready and autoscaled:
                ready = await self._wake(found.id, context)
            if not ready:  # scaled to 0, or a replica being replaced: worth a retry
                raise errors.Unavailable(
                    f"deployment {errors.shown(found.name)} has no ready replica now "
                    f"({found.replicas} wanted)"
                )
            return await self._predict(request, context, found.id, found.name, ready)

    async def _wake(self, deployment_id: str, context: Any) -> list[tuple[Replica, Version]]:
        """Wait for a ready replica of an autoscaled deployment, asking the controller for one
        if it has been scaled to zero: until one is ready, the call's deadline (less a second
        for the prediction itself) or `cold_start_s`, whichever comes first; [] if none."""
        left = context.time_remaining() if hasattr(context, "time_remaining") else None
        wait = self.cold_start_s if left is None else min(self.cold_start_s, left - 1.0)
        deadline = time.monotonic() + wait
        looked = time.monotonic()
        while time.monotonic() < deadline:
            if await self.store.wake(deployment_id):
                log.info("woken from zero", extra={"fields": {"deployment": deployment_id}})
                await self._nudge()
            await asyncio.sleep(WAKE_POLL_S)
            ready = await self.store.ready_replicas(deployment_id)
            if ready:
                return ready
            if time.monotonic() - looked >= 1.0:  # failed or deleted meanwhile: no replica
                looked = time.monotonic()
                found = await self.store.get(deployment_id, None)
                if found.state not in (PENDING, READY):
                    raise errors.FailedPrecondition(
                        f"deployment {errors.shown(found.name)} is {found.state}"
                        + (f": {found.error}" if found.error else "")
                    )
        return []

    async def _predict(
        self,
        request: Any,
        context: Any,
        deployment_id: str,
        name: str,
        ready: list[tuple[Replica, Version]],
    ) -> deployer_pb2.PredictResponse:
        auth = forwarded_credentials(context)
        last: grpc.aio.AioRpcError | None = None
        for replica, version in _order(ready)[:ATTEMPTS]:
            try:
                return await self._infer(request, deployment_id, name, replica, version, auth)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in CALLER_CODES:
                    raise CALLER_CODES[exc.code()](exc.details() or "") from None
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    log.warning(
                        "replica failed",
                        extra={"fields": {"port": replica.port, "code": exc.code().name}},
                    )
                    raise errors.Unavailable(f"the model server failed: {exc.details()}") from None
                last = exc
        raise errors.Unavailable(
            f"no replica of {errors.shown(name)} answered: "
            f"{last.details() if last else 'none ready'}"
        )

    def _stub(self, port: int) -> oip_grpc.GRPCInferenceServiceStub:
        channel = self.channels.get(port)
        if channel is None:
            target = f"{self.replica_host}:{port}"
            channel = self.channels[port] = grpc.aio.insecure_channel(target)
        return oip_grpc.GRPCInferenceServiceStub(channel)

    async def _infer(
        self,
        request: Any,
        deployment_id: str,
        name: str,
        replica: Replica,
        version: Version,
        auth: Sequence[tuple[str, str]],
    ) -> deployer_pb2.PredictResponse:
        stub = self._stub(replica.port)
        key = (deployment_id, version.version)
        if key not in self.inputs:
            meta = await stub.ModelMetadata(
                oip.ModelMetadataRequest(name=name, version=version.version),
                metadata=auth,
                timeout=10,
            )
            self.inputs[key] = [(t.name, t.datatype) for t in meta.inputs]
        infer = convert.infer_request(request, name, version.version, self.inputs[key])
        response = await stub.ModelInfer(infer, metadata=auth, timeout=PREDICT_TIMEOUT)
        try:
            return convert.predict_response(response, request.HasField("instances"))
        except ValueError as exc:
            raise errors.FailedPrecondition(str(exc)) from None


def _order(ready: list[tuple[Replica, Version]]) -> list[tuple[Replica, Version]]:
    """The replicas to try, the first drawn by its version's traffic share, then the rest."""
    weights = [max(v.traffic_percent, 0) + 1e-9 for _, v in ready]
    first = random.choices(range(len(ready)), weights)[0]
    rest = [r for i, r in enumerate(ready) if i != first]
    random.shuffle(rest)
    return [ready[first], *rest]
