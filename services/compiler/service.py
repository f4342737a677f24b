"""CompilerService: Compile, Validate, async compile jobs and the model registry."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc
from neural_dsl import DSLError, Limits, check
from service_kit import errors, owners, webhooks
from service_kit.http_bodies import content_disposition, http_bodies
from service_kit.interceptors import principal
from service_kit.jobs import JobRecord, JobStore
from service_kit.roles import service_roles
from service_kit.streams import StreamCap
from service_kit.tasks import Sendable

from . import convert
from .compile_step import BACKENDS, CompileInput, check_request, compile_artifact
from .exports import ExportQueue
from .registry import Registry

SERVICE = "neural.v1.CompilerService"
CHUNK = 64 * 1024

# Reading is for viewers; changing the registry needs a user: see compiler.proto.
METHOD_ROLES = service_roles(SERVICE)  # declared in the protos

# A program this small is checked on the event loop, in well under a millisecond: handing it
# to a thread and back costs about as much as the check. A larger one goes to a thread.
INLINE_CHECK_CHARS = 256
# GetModel's message per model row, for rows up to this many characters of text (a few MB in
# all at most). A row never changes, and building its message (the IR as a Struct, value by
# value in Python) is most of the call's CPU; the row is still read on every call.
CACHED_MODEL_CHARS = 64 * 1024
CACHED_MODELS = 256


@functools.lru_cache(maxsize=CACHED_MODELS)
def _model_message(row: Any) -> compiler_pb2.Model:
    return convert.model(row)


def _model(row: Any) -> compiler_pb2.Model:
    """The message of a model row; the same one for the same row while it is cached."""
    size = len(row.source) + len(row.ir_json) + len(row.shapes_json) + len(row.hparams_json)
    return _model_message(row) if size <= CACHED_MODEL_CHARS else convert.model(row)


class CompilerService(compiler_pb2_grpc.CompilerServiceServicer):
    def __init__(
        self,
        registry: Registry,
        jobs: JobStore,
        limits: Limits,
        enqueue: Sendable | None,
        exports: ExportQueue,
        max_watches_per_principal: int = 20,
    ) -> None:
        self.registry = registry
        self.jobs = jobs
        self.limits = limits
        self.enqueue = enqueue
        self.exports = exports
        self.watches = StreamCap(max_watches_per_principal)

    # ---------------------------------------------------------- requests
    def _input(self, request: compiler_pb2.CompileRequest) -> CompileInput:
        violations = []
        if not request.source.strip():
            violations.append(errors.FieldViolation("source", "must not be empty"))
        if len(request.source.encode()) > self.limits.max_source_bytes:
            violations.append(
                errors.FieldViolation("source", f"over {self.limits.max_source_bytes} bytes")
            )
        backend = convert.BACKEND_NAMES.get(request.backend)
        if backend is None:
            violations.append(
                errors.FieldViolation("backend", f"one of {', '.join(b.upper() for b in BACKENDS)}")
            )
        if len(request.name) > 200 or len(request.network) > 200:
            violations.append(errors.FieldViolation("name", "at most 200 characters"))
        if violations:
            raise errors.InvalidArgument("invalid compile request", violations)
        return CompileInput(
            principal().subject,
            request.source,
            backend or "",
            convert.hparams(request.hparams),
            request.network,
            request.name,
        )

    async def _jobs(self, records: list[JobRecord], per_job: int = 50) -> list[common_pb2.Job]:
        found = await self.jobs.deliveries([r.id for r in records], per_job)
        return [
            convert.job(r, [webhooks.to_proto(d) for d in found.get(r.id, [])]) for r in records
        ]

    def _code(self, row: Any) -> str:
        if row.artifact_name != "model.py":
            return ""
        path = self.registry.path(row.id, row.artifact_name)
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    # ---------------------------------------------------------- RPCs
    async def Compile(self, request: Any, context: Any) -> compiler_pb2.CompileResponse:
        req = self._input(request)
        cached = await self.registry.find(req.cache_key())
        if cached is not None:
            return compiler_pb2.CompileResponse(
                model=convert.model(cached), cached=True, code=self._code(cached)
            )
        try:
            if req.backend == "onnx":  # a bounded number at once: each holds its weights
                art = await self.exports.compile(req)
            else:  # code generation: CPU-bound, so off the event loop
                art = await asyncio.to_thread(compile_artifact, req, self.limits)
        except DSLError as exc:
            raise errors.program_invalid(exc) from None
        row, cached = await self.registry.store(req, art)
        return compiler_pb2.CompileResponse(
            model=convert.model(row),
            cached=cached,
            code=self._code(row),
            diagnostics=[
                common_pb2.Diagnostic(severity="warning", message=w, stage="backend")
                for w in art.warnings
            ],
        )

    async def Validate(self, request: Any, context: Any) -> compiler_pb2.ValidateResponse:
        if len(request.source.encode()) > self.limits.max_source_bytes:
            raise errors.InvalidArgument(
                "source too large",
                [errors.FieldViolation("source", f"over {self.limits.max_source_bytes} bytes")],
            )
        try:
            if len(request.source) <= INLINE_CHECK_CHARS:
                result = check(request.source, self.limits)
            else:
                result = await asyncio.to_thread(check, request.source, self.limits)
        except DSLError as exc:
            return compiler_pb2.ValidateResponse(
                valid=False,
                diagnostics=[
                    common_pb2.Diagnostic(
                        severity=d.severity.value,
                        message=d.message,
                        line=d.line,
                        column=d.column,
                        stage=d.stage,
                    )
                    for d in exc.diagnostics
                ],
            )
        return compiler_pb2.ValidateResponse(
            valid=True,
            diagnostics=[
                common_pb2.Diagnostic(
                    severity="warning",
                    message=d.message,
                    line=d.line,
                    column=d.column,
                    stage=d.stage,
                )
                for d in result.warnings
            ],
            shapes={name: convert.shapes(r.to_json()) for name, r in result.shapes.items()},
        )

    async def SubmitCompile(self, request: Any, context: Any) -> common_pb2.Job:
        req = self._input(request)
        # secrets are kept in the job's request for the delivery actor; no response shows them
        hooks = webhooks.validate(request.webhooks)
        try:  # what the worker would refuse (a bad program, a limit) is refused now
            await asyncio.to_thread(check_request, req, self.limits)
        except DSLError as exc:
            raise errors.program_invalid(exc) from None
        rec = await self.jobs.create(
            "compile",
            req.owner,
            {
                "source": req.source,
                "backend": req.backend,
                "hparams": req.hparams,
                "network": req.network,
                "name": req.name,
                "webhooks": hooks,
            },
        )
        assert self.enqueue is not None
        await self.jobs.enqueue(rec, self.enqueue)
        return convert.job(rec)

    async def GetCompileJob(self, request: Any, context: Any) -> common_pb2.Job:
        return (await self._jobs([await self.jobs.get(request.id, owners.scope())]))[0]

    async def ListCompileJobs(self, request: Any, context: Any) -> common_pb2.ListJobsResponse:
        state = convert.JOB_STATE_NAMES.get(request.state) if request.state else None
        records, token = await self.jobs.list(
            owners.scope(), request.page_size, request.page_token, state
        )
        # a page holds up to 1000 jobs: only the newest attempts of each
        return common_pb2.ListJobsResponse(
            jobs=await self._jobs(records, per_job=10), next_page_token=token
        )

    async def CancelCompileJob(self, request: Any, context: Any) -> common_pb2.Job:
        return (await self._jobs([await self.jobs.cancel(request.id, owners.scope())]))[0]

    async def WatchCompileJob(self, request: Any, context: Any) -> AsyncIterator[Any]:
        with self.watches.hold(principal().subject):  # one caller cannot hold them all
            async for event, message, rec in self.jobs.watch(request.id, owners.scope()):
                found = (await self.jobs.deliveries([rec.id])).get(rec.id, [])
                yield convert.event(rec, event, message, [webhooks.to_proto(d) for d in found])

    async def ListModels(self, request: Any, context: Any) -> compiler_pb2.ListModelsResponse:
        backend = convert.BACKEND_NAMES.get(request.backend, "") if request.backend else ""
        rows, token = await self.registry.list(
            owners.scope(), request.page_size, request.page_token, request.name, backend
        )
        return compiler_pb2.ListModelsResponse(
            models=[convert.model(r) for r in rows], next_page_token=token
        )

    async def GetModel(self, request: Any, context: Any) -> compiler_pb2.Model:
        return _model(await self.registry.get(request.id, owners.scope()))

    async def DownloadModel(self, request: Any, context: Any) -> AsyncIterator[Any]:
        row = await self.registry.get(request.id, owners.scope())
        path = self.registry.path(row.id, row.artifact_name)
        if not path.is_file():
            raise errors.Unavailable("the model's artifact is missing from storage")
        digest = hashlib.sha256()
        offset = 0
        with path.open("rb") as f:
            while True:
                data = await asyncio.to_thread(f.read, CHUNK)
                if not data:
                    break
                digest.update(data)
                first = offset == 0
                yield common_pb2.Chunk(
                    data=data,
                    offset=offset,
                    name=row.artifact_name if first else "",
                    total_size=row.artifact_size if first else 0,
                )
                offset += len(data)
        yield common_pb2.Chunk(offset=offset, sha256=digest.hexdigest())

    async def DownloadModelFile(self, request: Any, context: Any) -> AsyncIterator[Any]:
        row = await self.registry.get(request.id, owners.scope())
        path = self.registry.path(row.id, row.artifact_name)
        if not path.is_file():
            raise errors.Unavailable("the model's artifact is missing from storage")
        await context.send_initial_metadata(
            (("content-disposition", content_disposition(row.artifact_name)),)
        )
        async for body in http_bodies(path, row.artifact_name, CHUNK):
            yield body

    async def DeleteModel(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        await self.registry.delete(request.id, owners.scope())
        return empty_pb2.Empty()
