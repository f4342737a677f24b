"""One request cannot take the compiler: a server runs a bounded number of ONNX compiles at
once (each holds its network's weights), they run on threads side by side, and a program over
the parameter limit is refused at submit, naming the limit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import onnx
import pytest
from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc
from neural_dsl import Limits
from service_kit.errors import InvalidArgument, ServiceError

from services.compiler import exports
from services.compiler.compile_step import CompileInput, compile_artifact
from services.compiler.exports import ExportQueue
from tests.services.stack import Stack, pg_stack
from tests.waiting import until, until_async

REDIS_DB = 6
HUGE = """
network Huge {
  input: (70000,)
  layers:
    Dense(70000)
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.001)
}
"""


def small(n: int) -> str:
    """A distinct small program per n, so no compile is answered from the cache."""
    return f"""
network Small{n} {{
  input: (16,)
  layers:
    Dense({8 + n}, "relu")
    Output(3, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
}}
"""


def _onnx_ok(data: bytes) -> None:
    onnx.checker.check_model(onnx.load_model_from_string(data))


def test_onnx_compiles_on_threads_of_one_process_all_succeed() -> None:
    # the lowering holds no lock and no global state: 8 at once on 8 threads
    reqs = [CompileInput("alice", small(n), "onnx", {}, "", "") for n in range(8)]
    with ThreadPoolExecutor(len(reqs)) as pool:
        arts = list(pool.map(lambda r: compile_artifact(r, Limits()), reqs))
    for art in arts:
        _onnx_ok(art.data)


def test_an_onnx_file_over_its_limit_is_refused_naming_the_setting() -> None:
    req = CompileInput("alice", small(1), "onnx", {}, "", "")
    size = len(compile_artifact(req, Limits()).data)
    assert compile_artifact(req, Limits(max_onnx_bytes=size)).data
    with pytest.raises(InvalidArgument) as info:
        compile_artifact(req, Limits(max_onnx_bytes=size - 1))
    assert "NEURAL_MAX_ONNX_BYTES" in info.value.message
    assert f"{size:,} bytes" in info.value.message


async def test_export_queue_refuses_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    # compiles that stay running until the test lets them go: the queue's count is exact
    release = threading.Event()

    def held_compile(req: CompileInput, limits: Limits) -> object:
        release.wait(30)
        return compile_artifact(req, limits)

    monkeypatch.setattr(exports, "compile_artifact", held_compile)
    queue = ExportQueue(Limits(), capacity=2)
    first = asyncio.create_task(queue.compile(CompileInput("a", small(1), "onnx", {}, "", "")))
    second = asyncio.create_task(queue.compile(CompileInput("a", small(2), "onnx", {}, "", "")))
    await until_async(lambda: queue.held == 2, 30, "both compiles admitted")
    with pytest.raises(ServiceError) as full:
        await queue.compile(CompileInput("a", small(3), "onnx", {}, "", ""))
    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "NEURAL_ONNX_EXPORT_QUEUE" in full.value.message
    release.set()
    for art in await asyncio.gather(first, second):
        _onnx_ok(art.data)
    assert queue.held == 0  # and it serves again
    _onnx_ok((await queue.compile(CompileInput("a", small(6), "onnx", {}, "", ""))).data)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"NEURAL_AUTH_DISABLED": "1", "NEURAL_MAX_WATCHES_PER_PRINCIPAL": "2"}
    tmp = tmp_path_factory.mktemp("compiler-limits")
    with pg_stack(tmp, REDIS_DB, env=env, worker=True) as s:
        yield s


def _download(s: compiler_pb2_grpc.CompilerServiceStub, model_id: str) -> bytes:
    chunks = s.DownloadModel(compiler_pb2.DownloadModelRequest(id=model_id), timeout=60)
    return b"".join(c.data for c in chunks)


@pytest.mark.e2e
def test_concurrent_onnx_compiles_and_jobs_all_succeed(stack: Stack) -> None:
    s = compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address))
    onnx_backend = compiler_pb2.BACKEND_ONNX

    def compile_now(n: int) -> str:
        req = compiler_pb2.CompileRequest(source=small(n), backend=onnx_backend)
        return s.Compile(req, timeout=180).model.id

    jobs = [
        s.SubmitCompile(compiler_pb2.CompileRequest(source=small(100 + n), backend=onnx_backend))
        for n in range(3)
    ]
    with ThreadPoolExecutor(5) as pool:
        model_ids = list(pool.map(compile_now, range(5)))
    for job in jobs:
        events = list(s.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), timeout=180))
        assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED, events[-1].job.error
        model_ids.append(events[-1].job.result.removeprefix("models/"))
    assert len(set(model_ids)) == 8
    for model_id in model_ids:
        _onnx_ok(_download(s, model_id))


@pytest.mark.e2e
def test_a_network_over_the_parameter_limit_is_refused_at_submit(stack: Stack) -> None:
    s = compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address))
    before = len(s.ListCompileJobs(common_pb2.ListJobsRequest(page_size=1000), timeout=60).jobs)
    for call in (s.Compile, s.SubmitCompile):
        for backend in (compiler_pb2.BACKEND_ONNX, compiler_pb2.BACKEND_PYTORCH):
            with pytest.raises(grpc.RpcError) as info:
                call(compiler_pb2.CompileRequest(source=HUGE, backend=backend), timeout=60)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "100,000,000 parameters" in (info.value.details() or "")
    checked = s.Validate(compiler_pb2.ValidateRequest(source=HUGE), timeout=60)
    assert not checked.valid
    assert "100,000,000 parameters" in checked.diagnostics[0].message
    # no job was queued for the refused submits
    after = s.ListCompileJobs(common_pb2.ListJobsRequest(page_size=1000), timeout=60).jobs
    assert len(after) == before


@pytest.mark.e2e
def test_one_caller_holds_at_most_its_cap_of_job_watches(stack: Stack) -> None:
    s = compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address))
    stack.stop("worker")  # the job stays queued, so its watches stay open
    try:
        job = s.SubmitCompile(
            compiler_pb2.CompileRequest(source=small(200), backend=compiler_pb2.BACKEND_PYTORCH)
        )
        request = common_pb2.WatchJobRequest(id=job.id)
        streams = [s.WatchCompileJob(request, timeout=60) for _ in range(2)]
        for stream in streams:
            assert next(stream).type == "queued"
        with pytest.raises(grpc.RpcError) as info:
            next(s.WatchCompileJob(request, timeout=60))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "NEURAL_MAX_WATCHES_PER_PRINCIPAL" in (info.value.details() or "")
        for stream in streams:
            stream.cancel()
    finally:
        stack.start_worker()
    # the slots come back with the streams, and the job completes once a worker runs
    until(lambda: _finished_watch(s, request), 120, "a watch that sees the job succeed")


def _finished_watch(
    s: compiler_pb2_grpc.CompilerServiceStub, request: common_pb2.WatchJobRequest
) -> bool:
    try:
        events = list(s.WatchCompileJob(request, timeout=120))
    except grpc.RpcError as exc:  # the server has not yet seen the cancelled streams end
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        return False
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    return True
