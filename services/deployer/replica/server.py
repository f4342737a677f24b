"""The replica's gRPC server: inference.GRPCInferenceService (the Open Inference Protocol V2)
for one model, plus health and reflection."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from inference import grpc_predict_v2_pb2 as pb
from inference import grpc_predict_v2_pb2_grpc as pb_grpc
from service_kit.errors import InvalidArgument, NotFound, ServiceError, shown

from .auth import Gate
from .batching import Batcher
from .model import Model, ModelRunError
from .protocol import decode, encode
from .runner import Runner

log = logging.getLogger("neural.replica")

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "neural-replica"
SERVER_VERSION = "0.1.0"
PLATFORM = "onnxruntime_onnx"
STOP_DELAY_SECONDS = 1.0  # as a Kubernetes preStop sleep: the routes forget us first
GRACE_SECONDS = 5.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a batch of images is large; the gateway limits callers


@dataclass
class Settings:
    model_name: str
    model_version: str
    host: str = "127.0.0.1"
    port: int = 0
    max_batch_size: int = 1
    max_batch_delay_us: int = 0
    threads: int = 1
    concurrency: int = 2  # model runs at once (each with `threads` intra-op threads)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, model: Model, settings: Settings, gate: Gate) -> None:
        self.model = model
        self.settings = settings
        self.gate = gate
        self.ready = True
        self.runner = Runner(model.run, settings.concurrency)
        self.batcher = (
            Batcher(
                self.runner,
                settings.max_batch_size,
                settings.max_batch_delay_us / 1e6,
                runners=settings.concurrency,
            )
            if model.batchable and settings.max_batch_size > 1
            else None
        )
        self.metadata = pb.ModelMetadataResponse(
            name=settings.model_name,
            versions=[settings.model_version],
            platform=PLATFORM,
            inputs=[_tensor_meta(s) for s in model.inputs],
            outputs=[_tensor_meta(s) for s in model.outputs],
        )

    def _model(self, name: str, version: str) -> None:
        if name != self.settings.model_name:
            raise NotFound(
                f"unknown model {shown(name)}: this server serves {self.settings.model_name!r}"
            )
        if version and version != self.settings.model_version:
            raise NotFound(
                f"unknown version {shown(version)} of model {name!r}: this server serves "
                f"version {self.settings.model_version!r}"
            )

    # -------------------------------------------------------------- RPCs
    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        async with _errors(context):
            self.gate.check(context.invocation_metadata(), "ModelReady")
            self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        async with _errors(context):
            self.gate.check(context.invocation_metadata(), "ServerMetadata")
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        async with _errors(context):
            self.gate.check(context.invocation_metadata(), "ModelMetadata")
            self._model(request.name, request.version)
            return self.metadata

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        async with _errors(context):
            self.gate.check(context.invocation_metadata(), "ModelInfer")
            self._model(request.model_name, request.model_version)
            decoded = decode(request, self.model, self.settings.max_batch_size)
            try:
                if self.batcher is not None:
                    arrays = await self.batcher.infer(decoded.feeds, decoded.outputs)
                else:
                    arrays = await self.runner(decoded.feeds, decoded.outputs)
            except ModelRunError as exc:
                raise InvalidArgument(f"the model cannot run on these inputs: {exc}") from None
            return encode(
                request,
                self.model,
                self.settings.model_version,
                decoded.outputs,
                arrays,
                decoded.raw,
            )

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a replica serves one model")

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "a replica serves one model")

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.runner.close()


class _errors:
    """Service errors -> their gRPC status; anything else is the server's fault (INTERNAL)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (asyncio.CancelledError, grpc.aio.AbortError)):
            return False
        if isinstance(exc, ServiceError):
            await self.context.abort(exc.code, exc.message[:1000])
        log.exception("unexpected error", exc_info=exc)
        await self.context.abort(grpc.StatusCode.INTERNAL, "internal error in the model server")
        return False


def _tensor_meta(spec: Any) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=list(spec.shape)
    )


async def serve(model: Model, settings: Settings, gate: Gate) -> None:
    """Serve until SIGTERM/SIGINT, then stop taking calls and drain those in flight."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = InferenceServicer(model, settings, gate)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind"
        raise OSError(f"cannot listen on {address}: {exc}") from None
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    # The controller reads this line to learn the port: first on stdout, once listening.
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    log.info(
        "serving",
        extra={
            "fields": {
                "address": f"{settings.host}:{port}",
                "model": settings.model_name,
                "version": settings.model_version,
                "batching": servicer.batcher is not None,
            }
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: draining in-flight calls", extra={"fields": {"grace_s": GRACE_SECONDS}})
    servicer.ready = False
    await health_servicer.enter_graceful_shutdown()
    # Keep answering while the gateway learns this replica is going (the controller drops it
    # from Envoy's clusters before the SIGTERM, and health says NOT_SERVING now): grpc's own
    # stop cancels calls that are queued but not yet started, which would fail them.
    await asyncio.sleep(STOP_DELAY_SECONDS)
    await server.stop(GRACE_SECONDS)
    await servicer.close()
    log.info("stopped")


__all__ = ["InferenceServicer", "Settings", "serve"]
