"""The compiler service end to end: real server and worker processes, real PostgreSQL and
Redis, every RPC over gRPC, grpcurl through reflection alone, health, metrics, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from neural.v1 import common_pb2, compiler_pb2, compiler_pb2_grpc
from service_kit.auth import Principal
from service_kit.internal_token import Signer, load_private_key

from gateway.authz.keys import generate
from tests import tokens
from tests.services.receiver import Receiver
from tests.services.stack import VENV_BIN, Stack, pg_stack
from tests.waiting import until

pytestmark = pytest.mark.e2e

REDIS_DB = 8
MNIST = """
network MNIST {
  input: (28, 28, 1)
  layers:
    Conv2D(8, (3,3), "relu")
    MaxPooling2D((2,2))
    Flatten()
    Dense(HPO(choice(32, 64)), "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.001)
}
"""
HP = {"layers.dense_1.units": 32}
WIDE = """
network Wide {
  input: (4096,)
  layers:
    Dense(8192, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = {role: (f"{role}-key", role) for role in ("admin", "user", "viewer")}
    keys["other"] = ("other-user", "user")
    with pg_stack(tmp_path_factory.mktemp("compiler"), REDIS_DB, keys=keys, worker=True) as s:
        yield s


def stub(stack: Stack) -> compiler_pb2_grpc.CompilerServiceStub:
    return compiler_pb2_grpc.CompilerServiceStub(grpc.insecure_channel(stack.address))


def auth(stack: Stack, role: str = "user") -> tuple[tuple[str, str], ...]:
    return stack.meta(role)


def hparams(values: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def error(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def test_compile_every_backend_then_hit_the_cache(stack: Stack) -> None:
    s = stub(stack)
    ids = {}
    for backend in (
        compiler_pb2.BACKEND_PYTORCH,
        compiler_pb2.BACKEND_TENSORFLOW,
        compiler_pb2.BACKEND_ONNX,
    ):
        r = s.Compile(
            compiler_pb2.CompileRequest(source=MNIST, backend=backend, hparams=hparams(HP)),
            metadata=auth(stack),
            timeout=120,
        )
        assert not r.cached and r.model.total_params == 80 + 1352 * 32 + 32 + 330
        assert r.model.owner == "user-key" and r.model.network == "MNIST"
        # the IR and the shapes are structured, not JSON inside strings
        assert r.model.ir["networks"][0]["name"] == "MNIST" and "ir_version" in r.model.ir
        assert r.model.shapes.total_params == r.model.total_params
        assert list(r.model.shapes.output_shape) == [-1, 10]
        assert list(r.model.shapes.layers[3].output_shape) == [-1, 32]  # HP chose 32 units
        if backend == compiler_pb2.BACKEND_ONNX:
            assert r.code == "" and r.model.artifact_name == "model.onnx"
        else:
            assert "def build_model()" in r.code
        ids[backend] = r.model.id
    again = s.Compile(
        compiler_pb2.CompileRequest(
            source=MNIST, backend=compiler_pb2.BACKEND_ONNX, hparams=hparams(HP)
        ),
        metadata=auth(stack),
    )
    assert again.cached and again.model.id == ids[compiler_pb2.BACKEND_ONNX]
    # download streams the artifact in chunks; the last carries the sha256
    chunks = list(
        s.DownloadModel(compiler_pb2.DownloadModelRequest(id=again.model.id), metadata=auth(stack))
    )
    data = b"".join(c.data for c in chunks)
    assert chunks[0].name == "model.onnx" and chunks[0].total_size == len(data)
    assert chunks[-1].sha256 == hashlib.sha256(data).hexdigest() == again.model.artifact_sha256
    # and as HttpBody messages, which Envoy's transcoder turns into the file itself over REST
    call = s.DownloadModelFile(
        compiler_pb2.DownloadModelRequest(id=again.model.id), metadata=auth(stack)
    )
    bodies = list(call)
    assert b"".join(b.data for b in bodies) == data
    assert {b.content_type for b in bodies} == {"application/onnx"}
    # Envoy passes this on as a header: `curl -OJ` names the file from it
    disposition = dict(call.initial_metadata())["content-disposition"]
    assert disposition.startswith('attachment; filename="model.onnx"')
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)


def test_validate_reports_every_diagnostic_with_position(stack: Stack) -> None:
    s = stub(stack)
    ok = s.Validate(compiler_pb2.ValidateRequest(source=MNIST), metadata=auth(stack, "viewer"))
    assert ok.valid and list(ok.shapes["MNIST"].output_shape) == [-1, 10]
    report = ok.shapes["MNIST"]
    assert [(i.name, list(i.shape)) for i in report.inputs] == [("input", [-1, 28, 28, 1])]
    assert [layer.type for layer in report.layers][:2] == ["Conv2D", "MaxPooling2D"]
    assert report.layers[0].params == 80 and list(report.layers[0].output_shape) == [-1, 26, 26, 8]
    # Dense's units are an HPO choice: its width and its parameters are not known yet
    dense = report.layers[3]
    assert list(dense.output_shape) == [-1, -1] and not dense.HasField("params")
    assert not report.HasField("total_params")
    bad = s.Validate(
        compiler_pb2.ValidateRequest(
            source="network N {\n input: (4)\n layers:\n  Dense(-1)\n  Dropout(2)\n}"
        ),
        metadata=auth(stack, "viewer"),
    )
    assert not bad.valid
    assert [(d.line, d.column) for d in bad.diagnostics] == [(4, 9), (5, 11)]


def test_async_compile_job_runs_on_the_worker(stack: Stack) -> None:
    s = stub(stack)
    job = s.SubmitCompile(
        compiler_pb2.CompileRequest(
            source=MNIST,
            backend=compiler_pb2.BACKEND_PYTORCH,
            hparams=hparams({"layers.dense_1.units": 64}),
            name="async-mnist",
        ),
        metadata=auth(stack),
    )
    assert job.state == common_pb2.JOB_STATE_QUEUED
    events = list(
        s.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), metadata=auth(stack), timeout=120)
    )
    assert events[-1].type == "completed"
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    done = s.GetCompileJob(common_pb2.GetJobRequest(id=job.id), metadata=auth(stack))
    model_id = done.result.removeprefix("models/")
    model = s.GetModel(compiler_pb2.GetModelRequest(id=model_id), metadata=auth(stack))
    assert model.name == "async-mnist" and model.artifact_name == "model.py"
    listed = s.ListCompileJobs(
        common_pb2.ListJobsRequest(state=common_pb2.JOB_STATE_SUCCEEDED), metadata=auth(stack)
    )
    assert job.id in [j.id for j in listed.jobs]
    err = error(s.CancelCompileJob, common_pb2.CancelJobRequest(id=job.id), metadata=auth(stack))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    # a program the worker would fail is refused at submit, with the reason
    err = error(
        s.SubmitCompile,
        compiler_pb2.CompileRequest(source=MNIST, backend=compiler_pb2.BACKEND_ONNX),
        metadata=auth(stack),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no value for hyperparameter 'layers.dense_1.units'" in err.details()
    assert "--" not in err.details()  # a service names the request's field, never a CLI flag
    assert "give one in hparams" in err.details()


def test_compile_job_webhooks_get_signed_started_and_completed_events(stack: Stack) -> None:
    s = stub(stack)
    secret = "compile-hook-secret-0123456789"
    with Receiver() as rx:
        job = s.SubmitCompile(
            compiler_pb2.CompileRequest(
                source=MNIST,
                backend=compiler_pb2.BACKEND_PYTORCH,
                hparams=hparams(HP),
                name="hooked",
                webhooks=[common_pb2.Webhook(url=rx.url, secret=secret)],
            ),
            metadata=auth(stack),
        )
        assert secret.encode() not in job.SerializeToString()
        list(s.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), metadata=auth(stack)))
        accepted = rx.wait_accepted(2, timeout=60)
    assert sorted(r.event for r in accepted) == ["completed", "started"]
    for r in accepted:
        assert r.signed_by(secret) and r.json()["job"]["id"] == job.id
    completed = next(r.json() for r in accepted if r.event == "completed")
    assert completed["job"]["state"] == "succeeded"
    assert completed["job"]["result"].startswith("models/")
    # the attempts are on the job (recorded just after each answer), never the secret
    deadline = time.monotonic() + 30
    while True:
        done = s.GetCompileJob(common_pb2.GetJobRequest(id=job.id), metadata=auth(stack))
        if len(done.webhook_deliveries) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    got = sorted((d.event, d.attempt, d.status_code, d.delivered) for d in done.webhook_deliveries)
    assert got == [("completed", 1, 200, True), ("started", 1, 200, True)]
    assert all(d.url == rx.url and d.time.seconds for d in done.webhook_deliveries)
    listed = s.ListCompileJobs(common_pb2.ListJobsRequest(), metadata=auth(stack))
    watched = list(s.WatchCompileJob(common_pb2.WatchJobRequest(id=job.id), metadata=auth(stack)))
    for message in (done, listed, watched[-1]):
        assert secret.encode() not in message.SerializeToString()
    assert len(next(j for j in listed.jobs if j.id == job.id).webhook_deliveries) == 2
    assert len(watched[-1].job.webhook_deliveries) == 2


def test_bad_webhooks_are_invalid_argument_naming_the_field(stack: Stack) -> None:
    err = error(
        stub(stack).SubmitCompile,
        compiler_pb2.CompileRequest(
            source=MNIST,
            backend=compiler_pb2.BACKEND_PYTORCH,
            webhooks=[common_pb2.Webhook(url="file:///etc/passwd", secret="s" * 16)],
        ),
        metadata=auth(stack),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details_pb2.BadRequest()
    assert rpc_status.from_call(err).details[0].Unpack(bad)
    assert [v.field for v in bad.field_violations] == ["webhooks[0].url"]


def test_registry_lists_pages_and_deletes(stack: Stack) -> None:
    s = stub(stack)
    for units in (32, 64):
        s.Compile(
            compiler_pb2.CompileRequest(
                source=MNIST,
                backend=compiler_pb2.BACKEND_PYTORCH,
                hparams=hparams({"layers.dense_1.units": units}),
                name=f"page-{units}",
            ),
            metadata=auth(stack, "other"),
        )
    first = s.ListModels(compiler_pb2.ListModelsRequest(page_size=1), metadata=auth(stack, "other"))
    second = s.ListModels(
        compiler_pb2.ListModelsRequest(page_size=1, page_token=first.next_page_token),
        metadata=auth(stack, "other"),
    )
    assert {first.models[0].name, second.models[0].name} == {"page-32", "page-64"}
    assert not second.next_page_token
    # another user sees none of them; an admin sees all
    mine = s.ListModels(compiler_pb2.ListModelsRequest(name="page-"), metadata=auth(stack))
    assert mine.models == []
    every = s.ListModels(
        compiler_pb2.ListModelsRequest(name="page-"), metadata=auth(stack, "admin")
    )
    assert len(every.models) == 2
    target = first.models[0].id
    err = error(s.GetModel, compiler_pb2.GetModelRequest(id=target), metadata=auth(stack))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    s.DeleteModel(compiler_pb2.DeleteModelRequest(id=target), metadata=auth(stack, "other"))
    err = error(s.GetModel, compiler_pb2.GetModelRequest(id=target), metadata=auth(stack, "other"))
    assert err.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "request_", "role", "code"),
    [
        ("Compile", compiler_pb2.CompileRequest(source="", backend=1), "user", "INVALID_ARGUMENT"),
        ("Compile", compiler_pb2.CompileRequest(source=MNIST), "user", "INVALID_ARGUMENT"),
        (
            "Compile",
            compiler_pb2.CompileRequest(source=MNIST, backend=1),
            "viewer",
            "PERMISSION_DENIED",
        ),
        ("Compile", compiler_pb2.CompileRequest(source=MNIST, backend=1), None, "UNAUTHENTICATED"),
        (
            "Compile",
            compiler_pb2.CompileRequest(source=MNIST, backend=1),
            "bogus",
            "UNAUTHENTICATED",
        ),
        ("GetModel", compiler_pb2.GetModelRequest(id="nope"), "user", "NOT_FOUND"),
        ("DeleteModel", compiler_pb2.DeleteModelRequest(id="nope"), "user", "NOT_FOUND"),
        ("GetCompileJob", common_pb2.GetJobRequest(id="nope"), "viewer", "NOT_FOUND"),
        ("CancelCompileJob", common_pb2.CancelJobRequest(id="nope"), "user", "NOT_FOUND"),
        (
            "ListModels",
            compiler_pb2.ListModelsRequest(page_token="garbage!"),
            "user",
            "INVALID_ARGUMENT",
        ),
        ("ListCompileJobs", common_pb2.ListJobsRequest(page_size=-1), "user", "INVALID_ARGUMENT"),
        (
            "Validate",
            compiler_pb2.ValidateRequest(source="x" * 2_000_000),
            "viewer",
            "INVALID_ARGUMENT",
        ),
        (
            "Validate",
            compiler_pb2.ValidateRequest(source="y" * 5_000_000),
            "viewer",
            "RESOURCE_EXHAUSTED",
        ),
    ],
)
def test_bad_input_gets_the_documented_status(
    stack: Stack, method: str, request_: object, role: str | None, code: str
) -> None:
    s = stub(stack)
    md = (
        ()
        if role is None
        else ((("authorization", "Bearer nk_wrong"),) if role == "bogus" else auth(stack, role))
    )
    err = error(getattr(s, method), request_, metadata=md, timeout=30)
    assert err.code().name == code, err.details()


def test_malformed_dsl_is_invalid_argument_with_positions(stack: Stack) -> None:
    s = stub(stack)
    err = error(
        s.Compile,
        compiler_pb2.CompileRequest(
            source='network N {\n  input: (4)\n  layers: Dense(4) @ "npu"\n}',
            backend=compiler_pb2.BACKEND_PYTORCH,
        ),
        metadata=auth(stack),
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].field == "source:3:22"
    assert "invalid device 'npu'" in bad.field_violations[0].description


def test_only_the_authz_services_signed_tokens_are_trusted(stack: Stack, tmp_path: Path) -> None:
    s = stub(stack)
    ok = s.Validate(
        compiler_pb2.ValidateRequest(source=MNIST), metadata=tokens.as_("token-user", "viewer")
    )
    assert ok.valid
    # Signed with another key, expired, or a long-lived secret sent past the gateway: refused.
    other = Signer(load_private_key(generate(tmp_path / "other")[0]))
    expired = Signer(load_private_key(tokens.key_files()[0]), ttl_seconds=-5)
    refused = (
        tokens.meta(other.sign(Principal("token-user", "admin"))),
        tokens.meta(expired.sign(Principal("token-user", "admin"))),
        (("authorization", f"Bearer {tokens.sign('token-user', 'admin')}"),),
        (("x-api-key", "nk_" + "a" * 43),),
    )
    for md in refused:
        err = error(s.Validate, compiler_pb2.ValidateRequest(source=MNIST), metadata=md)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, md
    # A token limited to a resource reaches no RPC that acts on none.
    limited = tokens.meta(tokens.sign("token-user", "admin", ("runs/abc",)))
    err = error(s.Validate, compiler_pb2.ValidateRequest(source=MNIST), metadata=limited)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "limited to runs/abc" in err.details()


def test_still_serving_and_metrics_scraped(stack: Stack) -> None:
    with grpc.insecure_channel(stack.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "neural.v1.CompilerService"):
            r = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == health_pb2.HealthCheckResponse.SERVING
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    assert 'neural_grpc_requests_total{code="OK",method="Compile",service="compiler"}' in text
    assert 'neural_grpc_errors_total{code="NOT_FOUND",method="GetModel",service="compiler"}' in text
    assert "neural_grpc_request_seconds_bucket" in text


def grpcurl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=60
    )


def test_grpcurl_lists_describes_and_calls_through_reflection(stack: Stack) -> None:
    listed = grpcurl(stack, stack.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "neural.v1.CompilerService" in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(stack, stack.address, "describe", "neural.v1.CompilerService")
    assert "rpc Compile ( .neural.v1.CompileRequest ) returns ( .neural.v1.CompileResponse )" in (
        described.stdout
    )
    called = grpcurl(
        stack,
        "-H",
        f"x-neural-principal: {stack.keys['viewer']}",
        "-d",
        json.dumps({"source": MNIST}),
        stack.address,
        "neural.v1.CompilerService/Validate",
    )
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["valid"] is True
    denied = grpcurl(stack, "-d", "{}", stack.address, "neural.v1.CompilerService/ListModels")
    assert "Unauthenticated" in denied.stderr


ALL_METHODS = {
    "Compile": compiler_pb2.CompileRequest,
    "Validate": compiler_pb2.ValidateRequest,
    "SubmitCompile": compiler_pb2.CompileRequest,
    "GetCompileJob": common_pb2.GetJobRequest,
    "ListCompileJobs": common_pb2.ListJobsRequest,
    "CancelCompileJob": common_pb2.CancelJobRequest,
    "WatchCompileJob": common_pb2.WatchJobRequest,
    "ListModels": compiler_pb2.ListModelsRequest,
    "GetModel": compiler_pb2.GetModelRequest,
    "DownloadModel": compiler_pb2.DownloadModelRequest,
    "DownloadModelFile": compiler_pb2.DownloadModelRequest,
    "DeleteModel": compiler_pb2.DeleteModelRequest,
}
# With valid credentials, an empty request is the caller's mistake or an unknown id.
EMPTY_REQUEST = {
    "Compile": "INVALID_ARGUMENT",
    "SubmitCompile": "INVALID_ARGUMENT",
    "GetCompileJob": "NOT_FOUND",
    "CancelCompileJob": "NOT_FOUND",
    "WatchCompileJob": "NOT_FOUND",
    "GetModel": "NOT_FOUND",
    "DownloadModel": "NOT_FOUND",
    "DownloadModelFile": "NOT_FOUND",
    "DeleteModel": "NOT_FOUND",
}


def _call(stack: Stack, method: str, request: object, md: tuple) -> object:
    result = getattr(stub(stack), method)(request, metadata=md, timeout=30)
    streams = ("WatchCompileJob", "DownloadModel", "DownloadModelFile")
    return list(result) if method in streams else result


def test_every_rpc_rejects_missing_and_wrong_credentials(stack: Stack) -> None:
    for method, request_type in ALL_METHODS.items():
        for md in (
            (),
            (("authorization", "Bearer nk_not-a-key"),),
            (("authorization", "Basic dXNlcjpwYXNz"),),
            (("x-neural-principal", "not-a-token"),),
        ):
            err = error(_call, stack, method, request_type(), md)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (method, md, err.details())


def test_every_rpc_answers_an_empty_request_with_its_documented_status(stack: Stack) -> None:
    for method, request_type in ALL_METHODS.items():
        expected = EMPTY_REQUEST.get(method)
        if expected is None:  # Validate, ListCompileJobs and ListModels accept it
            _call(stack, method, request_type(), auth(stack, "admin"))
            continue
        err = error(_call, stack, method, request_type(), auth(stack, "admin"))
        assert err.code().name == expected, (method, err.details())
    with grpc.insecure_channel(stack.address) as ch:  # and the server keeps serving
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def compiles_in_flight(stack: Stack) -> float:
    """The server's own count of Compile calls being handled (its metrics endpoint)."""
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    pattern = r'^neural_grpc_in_flight\{method="Compile",service="compiler"\} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_sigterm_drains_and_exits_cleanly(tmp_path: Path) -> None:
    # a server of its own: this one is stopped, and no other test may depend on that; its
    # Redis db is the module stack's, still serving, so it is not flushed
    with pg_stack(
        tmp_path,
        REDIS_DB,
        # the drain waits for calls in flight up to the grace period: longer than any compile
        env={"NEURAL_GRACE_SECONDS": "120"},
        keys={"admin": ("admin-key", "admin")},
        flush=False,
    ) as own:
        # an ONNX compile of 34M parameters: a second or more of building and serialising
        # its weights, long enough to be seen in flight
        future = stub(own).Compile.future(
            compiler_pb2.CompileRequest(
                source=WIDE, backend=compiler_pb2.BACKEND_ONNX, name="in-flight"
            ),
            metadata=auth(own, "admin"),
            timeout=120,
        )
        until(lambda: compiles_in_flight(own) == 1, 30, "the Compile call to be in flight")
        assert own.stop("server", timeout=150) == 0
        assert future.result().model.name == "in-flight"  # the in-flight call was drained
