"""`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: Envoy asks, per call, whether
its descriptors are within their limits; the answer carries, per descriptor, the limit, what
remains and when room comes back (Envoy turns these into `x-ratelimit-*` headers), and
`retry-after` when the call is refused.

Descriptors (see GATEWAY.md's contract): `subject` + `role` for an authenticated call, or
`remote_address` for one without a subject, each with the call's `path` (and optionally its
HTTP `method`). `path`, `method` and `role` describe the call, not a window, so a descriptor
that lacks them takes them from the request's other descriptors: the answer is the same
whether Envoy sends one descriptor with every entry or one descriptor per entry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import duration_pb2
from prometheus_client import Counter, Gauge
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from service_kit import errors

from .config import Config
from .window import Charge, Decision, SlidingWindows

log = logging.getLogger("neural.ratelimit")

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = f"/{SERVICE}/ShouldRateLimit"

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
# Envoy writes the window into x-ratelimit-limit (`10, 10;w=60`) only for these lengths.
UNITS = {1: Unit.SECOND, 60: Unit.MINUTE, 3600: Unit.HOUR, 86400: Unit.DAY}
# Entries that describe the call rather than name a window (shared across descriptors).
CALL_ENTRIES = ("path", "method", "role")

DECISIONS = Counter(
    "neural_ratelimit_decisions_total",
    "Rate-limit decisions: admitted, refused, shadow_refused (would be refused; shadow mode "
    "admitted it), failed_open / failed_closed (Redis unreachable)",
    ["outcome"],
)
REDIS_UP = Gauge(
    "neural_ratelimit_redis_up",
    "1 while Redis answers the rate-limit service; 0 while it does not and decisions fail "
    "open or closed by NEURAL_RATELIMIT_FAIL_OPEN",
)
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisState:
    """Whether Redis answers, learned from decisions and from the health check; logs each
    change once, so an outage is one warning rather than one per call."""

    def __init__(self, client: aioredis.Redis, fail_open: bool) -> None:
        self.client = client
        self.fail_open = fail_open
        self.up = True
        REDIS_UP.set(1)

    def failed(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            REDIS_UP.set(0)
            log.warning(
                "Redis unreachable: rate limiting is degraded, failing %s",
                "open (every call admitted)" if self.fail_open else "closed (every call refused)",
                extra={"fields": {"error": repr(exc), "fail_open": self.fail_open}},
            )

    def answered(self) -> None:
        if not self.up:
            self.up = True
            REDIS_UP.set(1)
            log.info("Redis reachable again: rate limiting enforced")

    async def health(self) -> bool:
        """The service's health check: SERVING while Redis answers; while it does not,
        SERVING only when failing open (the service still answers every call)."""
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.failed(exc)
            return self.fail_open
        self.answered()
        return True


@dataclass(frozen=True)
class _Plan:
    charges: list[Charge]
    # For each descriptor, the index of its charge (None: it names no window).
    slots: list[int | None]


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, config: Config, windows: SlidingWindows, redis: RedisState) -> None:
        self.config = config
        self.windows = windows
        self.redis = redis

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        if request.domain != self.config.domain:
            raise errors.InvalidArgument(
                f"domain {request.domain!r} is not served here (this service serves "
                f"{self.config.domain!r})",
                [errors.FieldViolation("domain", f"must be {self.config.domain!r}")],
            )
        plan = self.plan(request)
        try:
            decision = await self.windows.decide(plan.charges)
        except REDIS_ERRORS as exc:
            self.redis.failed(exc)
            if self.redis.fail_open:
                DECISIONS.labels("failed_open").inc()
                return _unlimited(len(plan.slots))
            DECISIONS.labels("failed_closed").inc()
            # Not OVER_LIMIT: the caller is not over any limit; Envoy's failure_mode_deny
            # turns this error into a refusal.
            raise errors.Unavailable(
                "rate limits cannot be checked (Redis unreachable) and the service fails closed"
            ) from exc
        self.redis.answered()
        return self.answer(plan, decision)

    def plan(self, request: rls_pb2.RateLimitRequest) -> _Plan:
        """Which window each descriptor counts against and what the call costs there."""
        descriptors = [{e.key: e.value for e in d.entries} for d in request.descriptors]
        call: dict[str, str] = {}
        for entries in descriptors:
            for key in CALL_ENTRIES:
                if key in entries:
                    call.setdefault(key, entries[key])
        charges: list[Charge] = []
        by_key: dict[str, int] = {}
        slots: list[int | None] = []
        for d, entries in zip(request.descriptors, descriptors, strict=True):
            merged = call | entries
            bucket = self.config.bucket(merged)
            if bucket is None:
                slots.append(None)
                continue
            if bucket.key not in by_key:  # two descriptors naming one window count once
                hits = d.hits_addend.value if d.HasField("hits_addend") else 0
                hits = hits or request.hits_addend or 1
                cost = self.config.cost(merged.get("path"), merged.get("method")) * hits
                by_key[bucket.key] = len(charges)
                charges.append(Charge(bucket, cost))
            slots.append(by_key[bucket.key])
        return _Plan(charges, slots)

    def answer(self, plan: _Plan, decision: Decision) -> rls_pb2.RateLimitResponse:
        shadow = self.config.shadow_mode
        refused = not decision.admitted and not shadow
        if decision.admitted:
            DECISIONS.labels("admitted").inc()
        elif shadow:
            DECISIONS.labels("shadow_refused").inc()
            over = [w.charge.bucket.key for w in decision.windows if not w.fits]
            log.info("shadow mode: would refuse", extra={"fields": {"windows": over}})
        else:
            DECISIONS.labels("refused").inc()
        response = rls_pb2.RateLimitResponse(overall_code=Code.OVER_LIMIT if refused else Code.OK)
        for slot in plan.slots:
            status = response.statuses.add(code=Code.OK)
            if slot is None:
                continue
            window = decision.windows[slot]
            limit = window.charge.bucket.limit
            if refused and not window.fits:
                status.code = Code.OVER_LIMIT
            status.current_limit.name = window.charge.bucket.name
            status.current_limit.requests_per_unit = limit.requests
            status.current_limit.unit = UNITS.get(limit.window_seconds, Unit.UNKNOWN)
            status.limit_remaining = window.remaining
            status.duration_until_reset.CopyFrom(_seconds(window.reset_ms))
        if refused:
            wait = max(_ceil_s(w.reset_ms) for w in decision.windows if not w.fits)
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(max(1, wait)))
            )
        return response


def _ceil_s(ms: int) -> int:
    # Envoy's x-ratelimit-reset takes whole seconds: rounding down would tell a caller to
    # come back before there is room.
    return math.ceil(ms / 1000)


def _seconds(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=_ceil_s(ms))


def _unlimited(count: int) -> rls_pb2.RateLimitResponse:
    """Every descriptor OK, with no limit to report (Redis unreachable, failing open)."""
    response = rls_pb2.RateLimitResponse(overall_code=Code.OK)
    for _ in range(count):
        response.statuses.add(code=Code.OK)
    return response
