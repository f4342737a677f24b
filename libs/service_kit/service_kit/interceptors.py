"""One server interceptor for every call: request id, authentication, request checks,
metrics, logs, errors.

Every request message (each one of a stream) passes `request_checks` before its handler
reads it: no NUL in any string, no enum number its proto does not define. Handlers raise
`service_kit.errors` exceptions; here they become gRPC statuses (with a
google.rpc.BadRequest detail for invalid arguments), their messages cut to MAX_MESSAGE
characters. A database or Redis that cannot be reached is UNAVAILABLE; anything else
unexpected is INTERNAL, logged, and never explained to the caller beyond its request id.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from random import getrandbits
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Gauge, Histogram

from . import errors, request_checks
from .access_log import AccessLog
from .auth import Principal
from .internal_token import HEADER as PRINCIPAL_HEADER
from .internal_token import Verifier
from .logs import request_id
from .roles import Resource

log = logging.getLogger("neural.rpc")

REQUESTS = Counter(
    "neural_grpc_requests_total",
    "RPCs handled, by method and status code",
    ["service", "method", "code"],
)
ERRORS = Counter(
    "neural_grpc_errors_total",
    "RPCs that ended with a status other than OK",
    ["service", "method", "code"],
)
IN_FLIGHT = Gauge(
    "neural_grpc_in_flight",
    "RPCs being handled now (a stream counts until it ends), by method",
    ["service", "method"],
    # in a process group (service_kit.process_group): the sum over the living processes
    multiprocess_mode="livesum",
)
LATENCY = Histogram(
    "neural_grpc_request_seconds",
    "Time to handle an RPC",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)

ALWAYS_PUBLIC = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


# The platform's own RPCs: every message of theirs passes request_checks.
CHECKED = "/neural.v1."

# The request header that carries the caller's identity: the authz service's signed token. A
# service calling another as the caller forwards exactly these.
CREDENTIAL_HEADERS = (PRINCIPAL_HEADER,)


class CredentialCheck(Protocol):
    """What checks an API key or API token sent straight to a server: only the authz service
    has one (for its own AuthService, reached without the gateway by workers and tests).
    `method` is the RPC asked for, so a key scoped to RPCs is held to them here too."""

    async def verify(self, credential: str, method: str) -> Principal | None: ...


def forwarded_credentials(context: Any) -> list[tuple[str, str]]:
    """The caller's identity as call metadata, for a service calling another as the caller."""
    return [(k, v) for k, v in context.invocation_metadata() if k in CREDENTIAL_HEADERS]


def principal() -> Principal:
    """The authenticated caller of the RPC in flight."""
    p = current_principal.get()
    if p is None:
        raise errors.Unauthenticated("no credentials")
    return p


def _unavailable(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "OperationalError",
            "InterfaceError",
            "ConnectionError",
            "ConnectionRefusedError",
            "TimeoutError",
            "CannotConnectNowError",
            "ConnectionDoesNotExistError",
        }
    )


# What the drivers say when one statement would bind more values than the database allows:
# a request too large (handlers cap what they can; this catches the rest), not an outage.
_BIND_LIMIT_MESSAGES = ("number of query arguments cannot exceed", "too many SQL variables")


def _too_many_binds(exc: BaseException) -> bool:
    return any(m in str(e) for e in _chain(exc) for m in _BIND_LIMIT_MESSAGES)


def _chain(exc: BaseException) -> list[BaseException]:
    seen = []
    while exc is not None and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return seen


# A status travels in trailers, whose size gRPC limits (8 KiB by default): a message that
# echoes a huge input must not turn a caller's mistake into a broken response.
MAX_MESSAGE = 1000
MAX_VIOLATIONS = 20


def _cut(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _status(exc: errors.ServiceError) -> grpc.Status:
    detail = status_pb2.Status(code=exc.code.value[0], message=_cut(exc.message))
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_cut(v.field, 200), description=_cut(v.description, 300)
                )
                for v in exc.violations[:MAX_VIOLATIONS]
            ]
        )
        detail.details.add().Pack(bad)
    return rpc_status.to_status(detail)


class _Route:
    """What the interceptor needs of one RPC, worked out at its first call instead of at every
    one: its short name, the role it needs, its resource, whether its messages are checked and
    logged, and its metrics' series (a `labels()` lookup takes a lock and hashes the labels)."""

    __slots__ = (
        "counted",
        "in_flight",
        "latency",
        "logged",
        "method",
        "ours",
        "public",
        "resource",
        "role",
        "short",
    )

    def __init__(self, interceptor: Interceptor, method: str) -> None:
        self.method = method
        self.short = method.rsplit("/", 1)[-1]
        self.public = method in interceptor.public
        self.role = interceptor.roles.get(method, "user")
        self.resource = interceptor.resources.get(method)
        self.ours = method.startswith(CHECKED)
        self.logged = method not in ALWAYS_PUBLIC
        self.in_flight = IN_FLIGHT.labels(interceptor.service, self.short)
        self.latency = LATENCY.labels(interceptor.service, self.short)
        self.counted: dict[grpc.StatusCode, Any] = {}  # status code -> REQUESTS' series


class Interceptor(grpc.aio.ServerInterceptor):
    """The kit's checks and records around every handler. `serve` wraps each handler of the
    server once, at start (`wrap`); as a grpc.aio interceptor (`intercept_service`), it hands
    grpc the same wrapped handler at every call of a method."""

    def __init__(
        self,
        service: str,
        method_roles: dict[str, str],
        public: frozenset[str] = frozenset(),
        auth_disabled: bool = False,
        tokens: Verifier | None = None,
        credentials: CredentialCheck | None = None,
        resources: dict[str, Resource] | None = None,
        access: AccessLog | None = None,
    ) -> None:
        self.service = service
        # which calls are logged (errors, slow ones, a sample of the rest) and the summaries
        self.access = access or AccessLog()
        # Checks the gateway's internal tokens; None when no public key is configured, and
        # then any such token is refused.
        self.tokens = tokens
        self.credentials = credentials
        self.roles = method_roles
        # gRPC path -> the one resource the RPC acts on (the protos' `(neural.v1.resource)`).
        self.resources = resources or {}
        self.public = ALWAYS_PUBLIC | public
        self.auth_disabled = auth_disabled
        self._routes: dict[str, _Route] = {}
        # gRPC path -> (the handler, it wrapped): a method's handler is wrapped once.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return self.wrap(details.method, await continuation(details))  # type: ignore[return-value]

    def wrap(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """`handler` (of the RPC at gRPC path `method`) behind the interceptor; None stays
        None (grpc answers UNIMPLEMENTED). The same handler gets the same wrapper back."""
        if handler is None:
            return None
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                _lenient(handler.request_deserializer),
                handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, streamed=True),
                _lenient(handler.request_deserializer),
                handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method),
                _lenient(handler.request_deserializer),
                handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, method, streamed=True),
            _lenient(handler.request_deserializer),
            handler.response_serializer,
        )

    def _route(self, method: str) -> _Route:
        route = self._routes.get(method)
        if route is None:
            route = self._routes[method] = _Route(self, method)
        return route

    # -------------------------------------------------------------- per call
    async def _enter(self, route: _Route, context: Any) -> None:
        meta = dict(context.invocation_metadata() or ())
        # A random id, as uuid4's hex, from the process's generator (reseeded after a fork):
        # uuid4 reads the kernel's random source, a system call on every call.
        rid = str(meta.get("x-request-id") or f"{getrandbits(128):032x}")[:64]
        request_id.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        current_principal.set(None)
        if route.public:
            return
        if self.auth_disabled:
            current_principal.set(Principal("anonymous", "admin"))
            return
        if PRINCIPAL_HEADER in meta:
            who = self._internal(str(meta[PRINCIPAL_HEADER]))
        elif self.credentials is not None:
            who = await self._credential(meta, route.method)
        else:
            raise errors.Unauthenticated(
                "no internal token (x-neural-principal): call through the gateway, whose "
                "authz service checks your API key or token"
            )
        if not who.allows(route.role):
            raise errors.PermissionDenied(f"{route.short} needs the {route.role} role")
        current_principal.set(who)

    def _internal(self, token: str) -> Principal:
        """The principal of the authz service's token: it alone counts when present, so a
        forged one is refused rather than passed over for other credentials."""
        who = self.tokens.verify(token.strip()) if self.tokens is not None else None
        if who is None:
            raise errors.Unauthenticated("invalid or expired internal token (x-neural-principal)")
        return who

    async def _credential(self, meta: dict[str, Any], method: str) -> Principal:
        credential = ""
        header = str(meta.get("authorization", ""))
        if header.lower().startswith("bearer "):
            credential = header[7:].strip()
        elif meta.get("x-api-key"):
            credential = str(meta["x-api-key"]).strip()
        if not credential:
            raise errors.Unauthenticated(
                "missing credentials: send 'authorization: Bearer <api key or token>'"
            )
        assert self.credentials is not None
        who = await self.credentials.verify(credential, method)
        if who is None:
            raise errors.Unauthenticated("invalid, expired or revoked credentials")
        return who

    def _within_resources(self, route: _Route, request: Any, streamed: bool) -> None:
        """Credentials limited to resources reach only RPCs that act on one of them."""
        who = current_principal.get()
        if who is None or not who.resources:
            return
        if route.resource is None or streamed:
            raise errors.PermissionDenied(
                f"these credentials are limited to {', '.join(who.resources)[:200]}; "
                f"{route.short} does not act on one resource"
            )
        name = route.resource.of(request)
        if not who.reaches(name):
            raise errors.PermissionDenied(
                f"these credentials are limited to {', '.join(who.resources)[:200]}; "
                f"{route.short} asks for {name[:200]}"
            )

    def _to_status(self, exc: BaseException, method: str) -> grpc.Status:
        if isinstance(exc, errors.ServiceError):
            status = _status(exc)
        elif _too_many_binds(exc):
            log.warning("too many values for one statement in %s: %r", method, exc)
            status = _status(
                errors.ResourceExhausted(
                    "the request names more values than one database statement can take "
                    "(at most 32767 on PostgreSQL): send fewer at a time"
                )
            )
        elif _unavailable(exc):
            log.warning("dependency unavailable in %s: %r", method, exc)
            status = _status(errors.Unavailable("a backing service is unavailable; retry later"))
        else:
            log.exception("unexpected error in %s", method)
            status = _status(errors.ServiceError(f"internal error (request id {request_id.get()})"))
        return status

    def _done(self, route: _Route, code: grpc.StatusCode, started: float) -> None:
        elapsed = time.perf_counter() - started
        counted = route.counted.get(code)
        if counted is None:
            counted = route.counted[code] = REQUESTS.labels(self.service, route.short, code.name)
        counted.inc()
        route.latency.observe(elapsed)
        if code is not grpc.StatusCode.OK:
            ERRORS.labels(self.service, route.short, code.name).inc()
        if route.logged:
            self.access.record(route.method, code, elapsed)

    def _unary(
        self,
        behavior: Callable[..., Awaitable[Any]],
        method: str,
        streamed: bool = False,
    ) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            route = self._route(method)
            code = grpc.StatusCode.OK
            route.in_flight.inc()
            try:
                await self._enter(route, context)
                request, _held = _checked(request, streamed, route.ours)  # held for the handler
                self._within_resources(route, request, streamed)
                return await behavior(request, context)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = _code(context, grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                status = self._to_status(exc, method)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                route.in_flight.dec()
                self._done(route, code, started)

        return call

    def _stream(
        self,
        behavior: Callable[..., AsyncIterator[Any]],
        method: str,
        streamed: bool = False,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.perf_counter()
            route = self._route(method)
            code = grpc.StatusCode.OK
            route.in_flight.inc()
            try:
                await self._enter(route, context)
                request, _held = _checked(request, streamed, route.ours)  # held for the handler
                self._within_resources(route, request, streamed)
                async for item in behavior(request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = _code(context, grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                status = self._to_status(exc, method)
                code = status.code
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                route.in_flight.dec()
                self._done(route, code, started)

        return call


class _GuardedHandlers(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come out wrapped by the interceptor."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: Interceptor) -> None:
        self.inner = inner
        self.interceptor = interceptor

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return self.interceptor.wrap(details.method, self.inner.service(details))


class GuardedServer:
    """A grpc.aio server as the generated `add_*Servicer_to_server` functions (and health's,
    reflection's) see it: every handler they register goes in wrapped by `interceptor`, once.
    A grpc.aio server interceptor instead runs a coroutine of its own on every call."""

    def __init__(self, server: grpc.aio.Server, interceptor: Interceptor) -> None:
        self.server = server
        self.interceptor = interceptor

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(
            tuple(_GuardedHandlers(h, self.interceptor) for h in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrap = self.interceptor.wrap
        self.server.add_registered_method_handlers(
            service, {name: wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )


class Undecodable:
    """A request message whose bytes do not parse (Envoy's transcoder can build such bytes
    from JSON it should have refused, e.g. an object as a map<string, string> value): stands
    in for the message so that the call fails as the caller's mistake, after authentication."""

    def __init__(self, error: str) -> None:
        self.error = error

    def problem(self, where: str = "") -> errors.InvalidArgument:
        return errors.InvalidArgument(f"the request{where} is not a valid message: {self.error}")


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The deserializer, answering Undecodable instead of raising: grpc would otherwise end
    the call UNKNOWN (or INTERNAL), as if the service had failed."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return parse


def _checked(request: Any, streamed: bool, ours: bool = True) -> tuple[Any, list[Any]]:
    """The request, checked now, or a stream whose messages are each checked as the handler
    reads them; and what the check built, for the caller to hold while the handler runs.
    Messages of others' protocols (`ours` False: Envoy's Check and ShouldRateLimit, which
    Envoy itself builds) are only parsed."""
    if not streamed:
        if isinstance(request, Undecodable):
            raise request.problem()
        return request, request_checks.check(request) if ours else []

    async def each() -> AsyncIterator[Any]:
        n = 0
        async for message in request:
            n += 1
            if isinstance(message, Undecodable):
                raise message.problem(f" (message {n} of the stream)")
            _held = request_checks.check(message, f" (message {n} of the stream)") if ours else []
            yield message

    return each(), []


def _code(context: Any, default: grpc.StatusCode) -> grpc.StatusCode:
    try:
        code = context.code()
    except Exception:
        return default
    if isinstance(code, grpc.StatusCode):
        return code
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c
    return default


__all__ = [
    "CREDENTIAL_HEADERS",
    "GuardedServer",
    "Interceptor",
    "code_pb2",
    "current_principal",
    "forwarded_credentials",
    "principal",
]
