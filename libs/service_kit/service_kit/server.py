"""Running a service: a grpc.aio server with health, reflection, Prometheus metrics, the
interceptor, size limits, migrations at start and a graceful stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import start_http_server

from . import db, logs, pagination, process_group
from .access_log import AccessLog
from .interceptors import CredentialCheck, GuardedServer, Interceptor
from .internal_token import Verifier
from .roles import service_resources
from .settings import Settings, SettingsError, load

log = logging.getLogger("neural.server")


@dataclass
class ServiceSpec:
    name: str
    # (add_XServicer_to_server, servicer, full service name) for each service it serves
    servicers: list[tuple[Callable[[Any, Any], None], Any, str]]
    method_roles: dict[str, str] = field(default_factory=dict)
    public_methods: frozenset[str] = frozenset()
    # Each returns True when its dependency (database, Redis) answers.
    health_checks: list[Callable[[], Awaitable[bool]]] = field(default_factory=list)
    # Services described by reflection beyond those served (the authz server describes every
    # neural.v1 service, for clients that list the gateway).
    reflected: list[str] = field(default_factory=list)
    # Checks the gateway's internal tokens; by default one built from
    # NEURAL_AUTHZ_PUBLIC_KEY_FILE (the authz service brings its own, from its keypair).
    tokens: Verifier | None = None
    # Checks API keys and API tokens sent straight to the server: only the authz service has
    # one. Every other service trusts nothing but the internal token.
    credentials: CredentialCheck | None = None
    # Loads, once after the health service first says SERVING, what a first call would otherwise
    # pay for (imports, parsers, statement compilation, a plot's fonts), so that call costs
    # what later ones do. In the background: SERVING never waits for it, and its errors are
    # logged, not raised (a later call then pays the cost itself).
    warmup: Callable[[], Awaitable[None]] | None = None


def dependency_checks(engine: Any, redis_url: str) -> list[Callable[[], Awaitable[bool]]]:
    """The health checks of a service that needs its database and Redis."""
    from .broker import redis_ping

    async def database_up() -> bool:
        return await db.ping(engine)

    async def redis_up() -> bool:
        return await redis_ping(redis_url)

    return [database_up, redis_up]


async def _watch_health(
    spec: ServiceSpec,
    servicer: Any,
    names: list[str],
    every: float = 2.0,
    serving: asyncio.Event | None = None,
) -> None:
    """Keep the health service's status in step with the dependencies; `serving` is set
    once SERVING is out."""
    status = None
    while True:
        ok = all(await asyncio.gather(*(check() for check in spec.health_checks)))
        new = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        if new != status:
            for name in ["", *names]:
                await servicer.set(name, new)
            if status is not None:
                log.warning("health changed", extra={"fields": {"serving": ok}})
            status = new
        if ok and serving is not None:
            serving.set()
        await asyncio.sleep(every)


async def _warm(spec: ServiceSpec, serving: asyncio.Event) -> None:
    """Run the service's warm-up once health first says SERVING (never in its way, and with
    the dependencies it reads up); log its duration, or its error without raising it."""
    if spec.warmup is None:
        return
    await serving.wait()
    started = time.perf_counter()
    try:
        await spec.warmup()
    except Exception:
        log.exception("warm-up failed")
        return
    # What the warm-up loaded lives as long as the process, as what main() froze did.
    gc.freeze()
    took = round(time.perf_counter() - started, 3)
    log.info("warm-up done", extra={"fields": {"seconds": took}})


def interceptor(spec: ServiceSpec, settings: Settings) -> Interceptor:
    """The service's interceptor. A service with RPCs that need a role but no way to check
    a caller (no public key of the authz service, no credentials of its own, auth not
    disabled) refuses to start rather than refuse every call."""
    tokens = spec.tokens or (
        Verifier.from_file(settings.authz_public_key_file)
        if settings.authz_public_key_file
        else None
    )
    checks_callers = tokens is not None or spec.credentials is not None
    if spec.method_roles and not checks_callers and not settings.auth_disabled:
        raise SettingsError(
            "NEURAL_AUTHZ_PUBLIC_KEY_FILE must name the authz service's public key: services "
            "accept only the tokens it signs (NEURAL_AUTH_DISABLED=1 turns auth off, for a "
            "development stack without the gateway)"
        )
    resources = {}
    for _, _, name in spec.servicers:
        with contextlib.suppress(LookupError):  # not a neural.v1 service (Envoy's Check)
            resources.update(service_resources(name))
    return Interceptor(
        spec.name,
        spec.method_roles,
        spec.public_methods,
        settings.auth_disabled,
        tokens,
        spec.credentials,
        resources,
        AccessLog(settings.slow_call_ms, settings.access_log_sample, settings.access_log_summary_s),
    )


async def serve(
    spec: ServiceSpec,
    settings: Settings,
    ready: Callable[[int], None] | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain in-flight calls for `grace_seconds`.
    `reuse_port`: one process of a group sharing the port (service_kit.process_group);
    otherwise binding a port another server holds fails, loudly."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    server = grpc.aio.server(options=options)
    # Every handler goes in wrapped by the interceptor, once, here: as a grpc.aio server
    # interceptor it would run a coroutine of its own on every call.
    guarded = GuardedServer(server, interceptor(spec, settings))
    names = []
    for add, servicer, name in spec.servicers:
        add(servicer, guarded)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guarded)
    # What reflection.enable_server_reflection does for a grpc.aio server, on `guarded`.
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            sorted({*names, *spec.reflected, health.SERVICE_NAME, reflection.SERVICE_NAME})
        ),
        guarded,
    )
    # grpc's health service starts out SERVING: NOT_SERVING until this process's dependencies
    # answer (in a group, a caller reaches any process, and each answers for itself).
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = server.add_insecure_port(settings.address)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
    await server.start()
    serving = asyncio.Event()
    watcher = asyncio.create_task(_watch_health(spec, health_servicer, names, serving=serving))
    warming = asyncio.create_task(_warm(spec, serving))
    log.info(
        "serving",
        extra={
            "fields": {"address": f"{settings.host}:{port}", "metrics_port": settings.metrics_port}
        },
    )
    if ready:
        ready(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info(
        "stopping: draining in-flight calls",
        extra={"fields": {"grace_seconds": settings.grace_seconds}},
    )
    await health_servicer.enter_graceful_shutdown()
    watcher.cancel()
    warming.cancel()  # a thread it started finishes on its own; asyncio.run waits for it
    await server.stop(settings.grace_seconds)
    log.info("stopped")


__all__ = ["ServiceSpec", "grpc", "serve"]


def main(
    name: str,
    build: Callable[[Settings], Awaitable[Any]],
    migrate: Callable[[Settings], Awaitable[None]] | None = None,
    processes: bool = False,
) -> None:
    """`python -m services.<name>`: settings, logs, the service's wiring (`build` returns an
    object with `spec` and `async close()`), then serve until SIGTERM.

    `processes`: the service may serve as a group of NEURAL_<NAME>_PROCESSES processes on its
    port (service_kit.process_group); `migrate` then migrates its tables once, in the group's
    parent, before the processes start (each one's `build` finds them at head)."""
    settings = load(name, multiprocess=processes)
    logs.setup(name, settings.log_level)
    db.name_connections(f"neural-{name}")
    index = process_group.child_index()
    if index is None and settings.processes > 1:
        sys.exit(process_group.run(name, settings, migrate))
    if index is not None:
        process_group.adopted()

    async def run() -> None:
        # Page tokens signed under the service's secret stay valid across its restarts.
        pagination.configure(settings.page_token_secret)
        app = await build(settings)
        # What is loaded by now (modules, metadata, stubs) lives as long as the process: out
        # of the collector's full passes, which otherwise walk all of it, for tens of
        # milliseconds, while a large response allocates its objects.
        gc.freeze()
        try:
            await serve(app.spec, settings, reuse_port=index is not None)
        finally:
            await app.close()

    asyncio.run(run())
