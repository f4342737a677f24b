"""When Redis cannot be reached the compiler says so: health NOT_SERVING, and RPCs that need
it answer UNAVAILABLE; the ones that do not keep working."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from neural.v1 import compiler_pb2, compiler_pb2_grpc

from tests import tokens
from tests.services.stack import make_stack

pytestmark = pytest.mark.e2e


def test_unreachable_redis_is_not_serving_and_unavailable(tmp_path: Path) -> None:
    stack = make_stack(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", 0)
    stack.env["NEURAL_REDIS_URL"] = "redis://127.0.0.1:1/0"  # nothing listens there
    key = stack.sign_token("me", "user")
    stack.start_server()
    try:
        deadline = time.monotonic() + 60
        status = None
        with grpc.insecure_channel(stack.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    break
                except grpc.RpcError:
                    time.sleep(0.3)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = compiler_pb2_grpc.CompilerServiceStub(ch)
            md = tokens.meta(key)
            source = "network N {\n  input: (4)\n  layers:\n    Dense(3)\n}\n"
            assert stub.Validate(compiler_pb2.ValidateRequest(source=source), metadata=md).valid
            try:
                stub.SubmitCompile(
                    compiler_pb2.CompileRequest(source=source, backend=1), metadata=md, timeout=30
                )
                raise AssertionError("SubmitCompile should fail without Redis")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    finally:
        assert stack.stop("server") == 0
