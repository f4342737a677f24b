"""A version's model file: fetched as the caller from the tracker (a run's artifact) or the
compiler (an ONNX model of the registry), stored under
`<storage>/deployments/<deployment id>/<version>/model.onnx`, and loaded once with onnxruntime
so that a file it cannot load is refused at once, with the loader's reason."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
from neural.v1 import compiler_pb2, compiler_pb2_grpc, tracker_pb2, tracker_pb2_grpc
from service_kit import errors

from .spec import Source, bad

Metadata = Sequence[tuple[str, str]]
TIMEOUT = 120  # seconds for a whole download


def deployment_dir(storage: Path, deployment_id: str) -> Path:
    return storage / "deployments" / deployment_id


def model_path(storage: Path, deployment_id: str, version: str) -> Path:
    return deployment_dir(storage, deployment_id) / version / "model.onnx"


def _upstream(exc: grpc.aio.AioRpcError, src: Source, service: str) -> errors.ServiceError:
    """An error of the tracker or the compiler, as the caller's error where it is theirs."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound(f"{src.field}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return bad(src.field, details)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(details)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(f"{src.field}: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # a limit of the caller's, not an outage
        return errors.ResourceExhausted(f"{src.field}: {details}")
    return errors.Unavailable(f"the {service} is unavailable: {details}")


class ModelFetcher:
    def __init__(
        self, storage: Path, tracker_address: str, compiler_address: str, max_bytes: int
    ) -> None:
        self.storage = storage
        self.tracker_address = tracker_address
        self.compiler_address = compiler_address
        self.max_bytes = max_bytes

    async def fetch(
        self,
        src: Source,
        deployment_id: str,
        version: str,
        auth: Metadata,
        keep_others: bool = False,
    ) -> Path:
        """The model stored and checked; on any failure nothing is left behind (of the
        version's files only, with `keep_others`: the deployment's other versions serve)."""
        path = model_path(self.storage, deployment_id, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if src.model_id:
                await self._from_compiler(src, path, auth)
            else:
                await self._from_tracker(src, path, auth)
            await asyncio.to_thread(check_loads, path, src.field)
        except BaseException:
            if keep_others:
                remove_version_files(self.storage, deployment_id, version)
            else:
                shutil.rmtree(deployment_dir(self.storage, deployment_id), ignore_errors=True)
            raise
        return path

    async def _save(self, chunks: AsyncIterator, path: Path, src: Source) -> None:
        digest, size, expected = hashlib.sha256(), 0, ""
        tmp = path.with_suffix(".part")
        with tmp.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk.data)
                if size > self.max_bytes:
                    raise bad(src.field, f"the model is over {self.max_bytes} bytes")
                digest.update(chunk.data)
                out.write(chunk.data)
                expected = chunk.sha256 or expected
        if expected and expected != digest.hexdigest():
            raise errors.Unavailable("the model's download was corrupted: try again")
        tmp.replace(path)

    async def _from_tracker(self, src: Source, path: Path, auth: Metadata) -> None:
        async with grpc.aio.insecure_channel(self.tracker_address) as channel:
            stub = tracker_pb2_grpc.TrackerServiceStub(channel)
            request = tracker_pb2.DownloadArtifactRequest(run_id=src.run_id, path=src.artifact_path)
            try:
                await self._save(
                    stub.DownloadArtifact(request, metadata=auth, timeout=TIMEOUT), path, src
                )
            except grpc.aio.AioRpcError as exc:
                raise _upstream(exc, src, "tracker") from None

    async def _from_compiler(self, src: Source, path: Path, auth: Metadata) -> None:
        async with grpc.aio.insecure_channel(self.compiler_address) as channel:
            stub = compiler_pb2_grpc.CompilerServiceStub(channel)
            try:
                model = await stub.GetModel(
                    compiler_pb2.GetModelRequest(id=src.model_id), metadata=auth, timeout=10
                )
                if model.backend != compiler_pb2.BACKEND_ONNX:
                    backend = compiler_pb2.Backend.Name(model.backend).removeprefix("BACKEND_")
                    raise bad(
                        src.field,
                        f"model {errors.shown(src.model_id)} is a {backend} model: only ONNX "
                        "models can be deployed (compile the program with backend ONNX)",
                    )
                request = compiler_pb2.DownloadModelRequest(id=src.model_id)
                await self._save(
                    stub.DownloadModel(request, metadata=auth, timeout=TIMEOUT), path, src
                )
            except grpc.aio.AioRpcError as exc:
                raise _upstream(exc, src, "compiler") from None


def check_loads(path: Path, field: str) -> None:
    """FAILED_PRECONDITION with onnxruntime's reason when it cannot load the model."""
    import onnxruntime as ort  # heavy: loaded on the first deployment, not at import

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise errors.FailedPrecondition(
            f"{field}: onnxruntime cannot load the model: {reason[:500]}"
        ) from None


def remove_version_files(storage: Path, deployment_id: str, version: str) -> None:
    shutil.rmtree(model_path(storage, deployment_id, version).parent, ignore_errors=True)


def remove_files(storage: Path, deployment_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(deployment_dir(storage, deployment_id))
