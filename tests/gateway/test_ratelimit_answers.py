"""How the rate-limit service reads Envoy's descriptors and shapes its answers, with the
Redis windows' decisions given (no Redis here: tests/gateway/test_ratelimit_redis.py has it)."""

from __future__ import annotations

from typing import Any

from envoy.service.ratelimit.v3 import rls_pb2

from gateway.ratelimit import config
from gateway.ratelimit.service import RateLimitService
from gateway.ratelimit.window import Charge, Decision, WindowState

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit

LIMITS: dict[str, Any] = {
    "roles": {"user": {"requests": 10, "window_seconds": 60}, "viewer": {"requests": 4}},
    "default_role": "viewer",
    "anonymous": {"requests": 3, "window_seconds": 7},
    "costs": [{"name": "compile", "paths": ["/neural.v1.CompilerService/Compile"], "cost": 3}],
}


def service(**changes: Any) -> RateLimitService:
    # plan() and answer() never touch the windows or Redis.
    return RateLimitService(config.parse({**LIMITS, **changes}), None, None)  # type: ignore[arg-type]


def request(*descriptors: dict[str, str], hits: int = 0) -> rls_pb2.RateLimitRequest:
    req = rls_pb2.RateLimitRequest(domain="neural", hits_addend=hits)
    for entries in descriptors:
        d = req.descriptors.add()
        for key, value in entries.items():
            d.entries.add(key=key, value=value)
    return req


COMPILE = "/neural.v1.CompilerService/Compile"


def test_one_descriptor_with_every_entry_names_the_subjects_window_and_the_cost() -> None:
    plan = service().plan(request({"subject": "alice", "role": "user", "path": COMPILE}))
    assert plan.slots == [0]
    [charge] = plan.charges
    assert (charge.bucket.key, charge.bucket.name, charge.cost) == ("subject:alice", "role:user", 3)


def test_one_descriptor_per_entry_gives_the_same_window_and_cost() -> None:
    plan = service().plan(request({"subject": "alice"}, {"role": "user"}, {"path": COMPILE}))
    # Only the subject's descriptor names a window; role and path describe the call.
    assert plan.slots == [0, None, None]
    [charge] = plan.charges
    assert (charge.bucket.key, charge.bucket.limit.requests, charge.cost) == (
        "subject:alice",
        10,
        3,
    )


def test_descriptors_naming_one_window_count_once() -> None:
    plan = service().plan(
        request({"subject": "alice", "path": COMPILE}, {"subject": "alice", "role": "user"})
    )
    assert plan.slots == [0, 0]
    assert len(plan.charges) == 1


def test_an_anonymous_call_counts_against_its_address() -> None:
    plan = service().plan(request({"remote_address": "10.1.2.3", "path": "/x"}))
    assert [(c.bucket.key, c.cost) for c in plan.charges] == [("address:10.1.2.3", 1)]


def test_hits_addend_multiplies_the_cost_and_a_descriptors_own_wins() -> None:
    svc = service()
    assert svc.plan(request({"subject": "a", "path": COMPILE}, hits=2)).charges[0].cost == 6
    req = request({"subject": "a", "path": COMPILE}, hits=2)
    req.descriptors[0].hits_addend.value = 3
    assert svc.plan(req).charges[0].cost == 9


def decision(svc: RateLimitService, req: rls_pb2.RateLimitRequest, *states: Any) -> Any:
    plan = svc.plan(req)
    windows = [
        WindowState(Charge(c.bucket, c.cost), used, reset, fits)
        for c, (used, reset, fits) in zip(plan.charges, states, strict=True)
    ]
    admitted = all(w.fits for w in windows)
    return svc.answer(plan, Decision(admitted, windows))


def test_an_admitted_call_reports_limit_remaining_and_reset() -> None:
    svc = service()
    answer = decision(svc, request({"subject": "a", "role": "user"}), (4, 59_001, True))
    assert answer.overall_code == Code.OK
    [status] = answer.statuses
    assert status.code == Code.OK
    assert status.current_limit.requests_per_unit == 10
    assert status.current_limit.unit == Unit.MINUTE  # Envoy then writes `10, 10;w=60`
    assert status.current_limit.name == "role:user"
    assert status.limit_remaining == 6
    assert status.duration_until_reset.seconds == 60  # rounded up, never down
    assert not answer.response_headers_to_add


def test_a_refused_call_is_over_limit_with_retry_after() -> None:
    svc = service()
    answer = decision(
        svc, request({"remote_address": "10.0.0.1"}, {"path": "/x"}), (3, 2_500, False)
    )
    assert answer.overall_code == Code.OVER_LIMIT
    over, other = answer.statuses
    assert over.code == Code.OVER_LIMIT
    assert over.limit_remaining == 0
    assert over.duration_until_reset.seconds == 3
    assert over.current_limit.unit == Unit.UNKNOWN  # a 7 s window has no unit of its own
    assert other.code == Code.OK and not other.HasField("current_limit")
    assert [(h.key, h.value) for h in answer.response_headers_to_add] == [("retry-after", "3")]


def test_shadow_mode_reports_the_window_but_never_refuses() -> None:
    svc = service(shadow_mode=True)
    answer = decision(svc, request({"subject": "a"}), (4, 1_000, False))
    assert answer.overall_code == Code.OK
    [status] = answer.statuses
    assert status.code == Code.OK
    assert status.limit_remaining == 0
    assert not answer.response_headers_to_add
