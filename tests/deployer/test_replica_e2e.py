"""A replica process over gRPC: the Open Inference Protocol against in-process onnxruntime,
batching, every caller mistake, authentication, health, a model that does not load, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from inference import grpc_predict_v2_pb2 as pb
from inference import grpc_predict_v2_pb2_grpc as pb_grpc

from tests import tokens

from .conftest import ROOT, Replica, replica

pytestmark = pytest.mark.e2e

Code = grpc.StatusCode
MAX_BATCH = 8


def reference(path: Path) -> ort.InferenceSession:
    """In-process onnxruntime, set up as the replica sets up its session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replica-logs")


@pytest.fixture(scope="module")
def dense(onnx_models: dict[str, Path], logs: Path) -> Iterator[Replica]:
    """The dense model with batching on."""
    with replica(
        onnx_models["dense"],
        logs,
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-batch-delay-us",
        "2000",
        name="dense",
    ) as r:
        yield r


@pytest.fixture(scope="module")
def conv(onnx_models: dict[str, Path], logs: Path) -> Iterator[Replica]:
    with replica(onnx_models["conv"], logs, "--max-batch-size", "4", name="conv") as r:
        yield r


@pytest.fixture(scope="module")
def multi(onnx_models: dict[str, Path], logs: Path) -> Iterator[Replica]:
    with replica(onnx_models["multi"], logs, "--max-batch-size", "4", name="multi") as r:
        yield r


@pytest.fixture(scope="module")
def guarded(onnx_models: dict[str, Path], logs: Path) -> Iterator[Replica]:
    """The dense model behind authentication: the authz service's public key is set."""
    env = {"NEURAL_AUTHZ_PUBLIC_KEY_FILE": tokens.public_key_file()}
    with replica(onnx_models["dense"], logs, name="dense", env=env) as r:
        yield r


@pytest.fixture
async def channel() -> AsyncIterator[dict[str, grpc.aio.Channel]]:
    """Channels by address, closed at the end of the test."""
    opened: dict[str, grpc.aio.Channel] = {}
    yield opened
    for ch in opened.values():
        await ch.close()


def stub(channels: dict[str, grpc.aio.Channel], r: Replica) -> pb_grpc.GRPCInferenceServiceStub:
    if r.address not in channels:
        channels[r.address] = grpc.aio.insecure_channel(r.address)
    return pb_grpc.GRPCInferenceServiceStub(channels[r.address])


def infer_request(
    name: str, inputs: dict[str, tuple[str, np.ndarray]], raw: bool = True, **fields: object
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=name, **fields)
    for tensor_name, (datatype, array) in inputs.items():
        tensor = req.inputs.add(name=tensor_name, datatype=datatype, shape=array.shape)
        if raw:
            req.raw_input_contents.append(array.tobytes())
        elif datatype == "FP32":
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(array.ravel().tolist())
    return req


NUMPY = {"FP32": np.float32, "FP16": np.float16, "INT64": np.int64}


def outputs_of(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    out = {}
    for i, tensor in enumerate(response.outputs):
        dtype = NUMPY[tensor.datatype]
        if response.raw_output_contents:
            flat = np.frombuffer(response.raw_output_contents[i], dtype)
        elif tensor.datatype == "FP32":
            flat = np.array(tensor.contents.fp32_contents, dtype)
        else:
            flat = np.array(tensor.contents.int64_contents, dtype)
        out[tensor.name] = flat.reshape(tuple(tensor.shape))
    return out


async def expect_error(call: object, code: Code, *words: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    for word in words:
        assert word in caught.value.details(), caught.value.details()
    return caught.value.details()


# ------------------------------------------------------------------ the protocol
async def test_live_ready_and_metadata_describe_the_model(
    dense: Replica, onnx_models: dict[str, Path], channel: dict
) -> None:
    s = stub(channel, dense)
    assert (await s.ServerLive(pb.ServerLiveRequest())).live
    assert (await s.ServerReady(pb.ServerReadyRequest())).ready
    assert (await s.ModelReady(pb.ModelReadyRequest(name="dense"))).ready
    assert (await s.ModelReady(pb.ModelReadyRequest(name="dense", version="v1"))).ready
    server = await s.ServerMetadata(pb.ServerMetadataRequest())
    assert server.name and server.version
    meta = await s.ModelMetadata(pb.ModelMetadataRequest(name="dense"))
    assert (meta.name, list(meta.versions), meta.platform) == ("dense", ["v1"], "onnxruntime_onnx")
    session = reference(onnx_models["dense"])
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        (i.name, "FP32", [-1, *i.shape[1:]]) for i in session.get_inputs()
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        (o.name, "FP32", [-1, *o.shape[1:]]) for o in session.get_outputs()
    ]


async def test_health_and_reflection(dense: Replica, channel: dict) -> None:
    stub(channel, dense)
    health = health_pb2_grpc.HealthStub(channel[dense.address])
    for service in ("", "inference.GRPCInferenceService"):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel[dense.address])
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for answer in reflect.ServerReflectionInfo(iter([request])):
        names = {s.name for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names
        break


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("model", ["dense", "conv"])
async def test_infer_equals_in_process_onnxruntime(
    model: str,
    raw: bool,
    request: pytest.FixtureRequest,
    onnx_models: dict[str, Path],
    channel: dict,
) -> None:
    r: Replica = request.getfixturevalue(model)
    session = reference(onnx_models[model])
    (arg,) = session.get_inputs()
    rng = np.random.default_rng(7)
    for batch in (1, 3, 4):
        x = rng.standard_normal((batch, *arg.shape[1:])).astype(np.float32)
        answer = await stub(channel, r).ModelInfer(
            infer_request(model, {arg.name: ("FP32", x)}, raw=raw, id=f"req-{batch}")
        )
        assert answer.id == f"req-{batch}" and answer.model_version == "v1"
        assert bool(answer.raw_output_contents) is raw
        got = outputs_of(answer)
        want = session.run(None, {arg.name: x})
        assert list(got) == [o.name for o in session.get_outputs()]
        for (_, g), w in zip(got.items(), want, strict=True):
            assert g.dtype == w.dtype and np.array_equal(g, w)


async def test_requested_outputs_in_the_order_asked(
    multi: Replica, onnx_models: dict[str, Path], channel: dict
) -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    b = np.arange(6, dtype=np.int64).reshape(3, 2) - 2
    session = reference(onnx_models["multi"])
    inputs = {"a": ("FP32", a), "b": ("INT64", b)}
    for raw in (True, False):
        req = infer_request("multi", inputs, raw=raw, id="many", model_version="v1")
        req.outputs.add(name="squared")
        req.outputs.add(name="doubled")
        answer = await stub(channel, multi).ModelInfer(req)
        got = outputs_of(answer)
        assert list(got) == ["squared", "doubled"] and answer.id == "many"
        want = session.run(["squared", "doubled"], {"a": a, "b": b})
        assert np.array_equal(got["squared"], want[0]) and np.array_equal(got["doubled"], want[1])
    # an FP16 output has no typed field: then every output is answered raw
    answer = await stub(channel, multi).ModelInfer(infer_request("multi", inputs, raw=False))
    got = outputs_of(answer)
    assert len(answer.raw_output_contents) == 3
    assert np.array_equal(got["half"], session.run(["half"], {"a": a, "b": b})[0])


async def test_nan_inputs_reach_the_model(
    dense: Replica, onnx_models: dict[str, Path], channel: dict
) -> None:
    """The replica does not judge values: a NaN gives what the model makes of it."""
    x = np.zeros((2, 8), np.float32)
    x[1, 3] = np.nan
    answer = await stub(channel, dense).ModelInfer(infer_request("dense", {"input": ("FP32", x)}))
    want = reference(onnx_models["dense"]).run(None, {"input": x})[0]
    assert np.array_equal(outputs_of(answer)["output"], want, equal_nan=True)


async def test_32_concurrent_requests_with_batching(
    dense: Replica, onnx_models: dict[str, Path], channel: dict
) -> None:
    """Each request gets its own rows. Merged batches differ from one-request runs by how the
    math library blocks rows at most, so they are compared with a float32 tolerance; a batch
    of exactly the request is compared exactly above."""
    session = reference(onnx_models["dense"])
    rng = np.random.default_rng(32)
    xs = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32) for i in range(32)]
    s = stub(channel, dense)
    answers = await asyncio.gather(
        *(
            s.ModelInfer(infer_request("dense", {"input": ("FP32", x)}, id=str(i)))
            for i, x in enumerate(xs)
        )
    )
    for i, (x, answer) in enumerate(zip(xs, answers, strict=True)):
        assert answer.id == str(i)
        got = outputs_of(answer)["output"]
        want = session.run(None, {"input": x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ caller mistakes
async def test_every_bad_input_names_the_tensor(multi: Replica, channel: dict) -> None:
    s = stub(channel, multi)
    a = np.zeros((2, 4), np.float32)
    b = np.zeros((2, 2), np.int64)
    good = {"a": ("FP32", a), "b": ("INT64", b)}

    def variant(**change: object) -> pb.ModelInferRequest:
        req = infer_request("multi", good)
        for key, value in change.items():
            if key == "name":
                req.inputs[0].name = str(value)
            elif key == "datatype":
                req.inputs[0].datatype = str(value)
            elif key == "shape":
                del req.inputs[0].shape[:]
                req.inputs[0].shape.extend(value)  # type: ignore[arg-type]
            elif key == "output":
                req.outputs.add(name=str(value))
            else:
                setattr(req, key, value)
        return req

    invalid = Code.INVALID_ARGUMENT
    await expect_error(s.ModelInfer(variant(name="x")), invalid, "'x'", "a, b")
    await expect_error(s.ModelInfer(variant(datatype="FP64")), invalid, "'a'", "FP64", "FP32")
    await expect_error(s.ModelInfer(variant(shape=[2, 3])), invalid, "'a'", "[2, 3]", "[-1, 4]")
    await expect_error(s.ModelInfer(variant(shape=[8])), invalid, "'a'", "[-1, 4]")
    big = {"a": ("FP32", np.zeros((5, 4), np.float32)), "b": ("INT64", np.zeros((5, 2), np.int64))}
    await expect_error(
        s.ModelInfer(infer_request("multi", big)), invalid, "'a'", "batch of 5", "maximum", "4"
    )
    await expect_error(s.ModelInfer(variant(output="nope")), invalid, "'nope'", "doubled")
    short = infer_request("multi", good)
    short.raw_input_contents[1] = short.raw_input_contents[1][:8]
    await expect_error(s.ModelInfer(short), invalid, "'b'", "8 bytes", "32")
    missing = infer_request("multi", {"a": ("FP32", a)})
    await expect_error(s.ModelInfer(missing), invalid, "missing input", "b")
    await expect_error(
        s.ModelInfer(variant(model_name="other")), Code.NOT_FOUND, "'other'", "multi"
    )
    await expect_error(s.ModelInfer(variant(model_version="v9")), Code.NOT_FOUND, "'v9'", "'v1'")
    await expect_error(
        s.ModelMetadata(pb.ModelMetadataRequest(name="multi", version="v2")), Code.NOT_FOUND, "'v2'"
    )
    await expect_error(s.ModelReady(pb.ModelReadyRequest(name="other")), Code.NOT_FOUND, "'other'")
    await expect_error(
        s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="multi")),
        Code.UNIMPLEMENTED,
    )
    # the replica still serves after all of that
    assert outputs_of(await s.ModelInfer(infer_request("multi", good)))["squared"].shape == (2, 2)


def test_a_model_file_onnxruntime_cannot_load_exits_3_with_the_reason(
    onnx_models: dict[str, Path],
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.deployer.replica",
            "--model",
            str(onnx_models["broken"]),
            "--model-name",
            "bad",
            "--model-version",
            "v1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == ""  # never a PORT line
    last = proc.stderr.strip().splitlines()[-1]
    assert "onnxruntime cannot load" in last and "broken.onnx" in last
    assert "Protobuf parsing failed" in last or "INVALID_PROTOBUF" in last, last


# ------------------------------------------------------------------ authentication
async def test_tokens_roles_and_resources(guarded: Replica, channel: dict) -> None:
    s = stub(channel, guarded)
    x = np.ones((1, 8), np.float32)
    req = infer_request("dense", {"input": ("FP32", x)})
    meta = pb.ModelMetadataRequest(name="dense")
    # the liveness and readiness probes need no token
    assert (await s.ServerLive(pb.ServerLiveRequest())).live
    assert (await s.ServerReady(pb.ServerReadyRequest())).ready
    await expect_error(s.ModelInfer(req), Code.UNAUTHENTICATED, "x-neural-principal")
    await expect_error(s.ModelMetadata(meta), Code.UNAUTHENTICATED)
    forged = tokens.sign("ana", "user")[:-4] + "AAAA"
    await expect_error(s.ModelInfer(req, metadata=tokens.meta(forged)), Code.UNAUTHENTICATED)
    viewer = tokens.as_("ana", "viewer")
    assert (await s.ModelMetadata(meta, metadata=viewer)).name == "dense"
    await expect_error(s.ModelInfer(req, metadata=viewer), Code.PERMISSION_DENIED, "user")
    other = tokens.meta(tokens.sign("ana", "user", ("deployments/another",)))
    await expect_error(s.ModelInfer(req, metadata=other), Code.PERMISSION_DENIED, "deployments/")
    await expect_error(s.ModelMetadata(meta, metadata=other), Code.PERMISSION_DENIED)
    mine = tokens.meta(tokens.sign("ana", "user", ("deployments/dense",)))
    user = tokens.as_("ana", "user")
    for creds in (mine, user, user):  # the second call with a token is answered from the cache
        answer = await s.ModelInfer(req, metadata=creds)
        assert outputs_of(answer)["output"].shape == (1, 4)


# ------------------------------------------------------------------ stopping
async def test_sigterm_drains_the_calls_in_flight_and_exits(
    onnx_models: dict[str, Path], logs: Path
) -> None:
    with replica(onnx_models["slow"], logs, name="slow") as r:
        async with grpc.aio.insecure_channel(r.address) as ch:
            s = pb_grpc.GRPCInferenceServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            req = pb.ModelInferRequest(model_name="slow")
            req.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(0)
            req.inputs.add(name="trips", datatype="INT64", shape=[]).contents.int64_contents.append(
                300_000  # a few tenths of a second of model run
            )
            # The server has the call once a later one on the same connection is answered
            # (HTTP/2 delivers the streams in order).
            call = s.ModelInfer(req)
            assert (await s.ServerLive(pb.ServerLiveRequest())).live
            r.proc.send_signal(signal.SIGTERM)
            answer = await call  # drained, not dropped
            assert list(answer.outputs[0].contents.fp32_contents) == [300_000]
            try:  # stopping: new calls are refused, or told NOT_SERVING
                status = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == Code.UNAVAILABLE, exc
        assert await asyncio.to_thread(r.proc.wait, 30) == 0
    assert "stopped" in r.stderr.read_text()
