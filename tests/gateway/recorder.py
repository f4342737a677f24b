"""A gRPC server that stands in for an upstream of the gateway and records what reaches it: the
metadata of every call, and the request headers ext_authz's Check sends. It answers Check with
"allowed" (adding no header) after an optional delay, the health check with SERVING, and any
other unary method with the next outcome queued for it (an empty message when none is), so a
test can see exactly what Envoy forwards, retries or withholds."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2

CHECK = "/envoy.service.auth.v3.Authorization/Check"
HEALTH = "/grpc.health.v1.Health/Check"


@dataclass
class Call:
    method: str
    metadata: dict[str, str]


@dataclass
class Recorder:
    check_delay_s: float = 0.0
    calls: list[Call] = field(default_factory=list)
    checks: list[dict[str, str]] = field(default_factory=list)  # Check's request headers
    outcomes: dict[str, deque[grpc.StatusCode]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        server.add_generic_rpc_handlers([_Handler(self)])
        self.port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0)

    def fail_next(self, method: str, *codes: grpc.StatusCode) -> None:
        with self._lock:
            self.outcomes[method].extend(codes)

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def handle(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        if method == HEALTH:
            serving = health_pb2.HealthCheckResponse.SERVING
            return health_pb2.HealthCheckResponse(status=serving).SerializeToString()
        if method == CHECK:
            check = external_auth_pb2.CheckRequest.FromString(request)
            with self._lock:
                self.checks.append(dict(check.attributes.request.http.headers))
            time.sleep(self.check_delay_s)
            allowed = status_pb2.Status(code=code_pb2.OK)
            return external_auth_pb2.CheckResponse(status=allowed).SerializeToString()
        with self._lock:
            self.calls.append(Call(method, dict(context.invocation_metadata())))
            queued = self.outcomes[method]
            code = queued.popleft() if queued else None
        if code is not None:
            context.abort(code, f"recorder: {code.name}")
        return b""  # an empty message, valid for every message type


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = details.method

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self.recorder.handle(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)
