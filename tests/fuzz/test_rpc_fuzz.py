"""Every RPC of every neural.v1 service the servers serve, called with generated requests,
on PostgreSQL and SQLite: no call may end INTERNAL or UNKNOWN (a caller's mistake is the
caller's status, never a server error), none may hang, and every server keeps serving.

The RPCs are found in the descriptors (each *_pb2 module of neural.v1) and matched to the
running servers by reflection, so a new RPC is fuzzed without a line here. Requests come
from tests/fuzz/messages.py; streaming RPCs get a few messages each way. AuthService (the
authz server) is called with API tokens bound to no API key, so the RevokeApiKey and
RotateApiKey it fuzzes never take the callers' credentials away. DeployerService's requests
draw a READY deployment of a compiled ONNX model (made anew after DeleteDeployment and before
Predict, with one scaled to zero that Predict wakes), and valid replica counts of at most 2
(each replica is a process); its controller must stay up, and leave no replica behind once
stopped. Each RPC runs NEURAL_FUZZ_EXAMPLES examples (50 by default: both databases together
take about two minutes; more need a longer --timeout than pytest's 300 s per test); the
figures (RPCs covered, examples run, status codes, INTERNAL/UNKNOWN count) are printed in the
"rpc fuzz" section at the end of the run, and with -s after each database's test.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import neural.v1
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from neural.v1 import auth_pb2, auth_pb2_grpc

from tests.fuzz import stack as fuzz_stack
from tests.fuzz.figures import RECORDED, Figures
from tests.fuzz.messages import Pools, requests
from tests.services.conftest import create_pg_database, drop_pg_database
from tests.services.trainer_stack import TrainerStack

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("NEURAL_FUZZ_EXAMPLES", "50"))
UNARY_DEADLINE = 20.0  # seconds: a compile of a generated valid program fits well within
STREAM_DEADLINE = 5.0  # a watch with nothing to say may stay open: that is not a failure
STREAM_LINGER = 0.3  # after a streamed response's first message, read on this long
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# UNAVAILABLE that an RPC's documentation promises (worth a retry), not a server stuck: Predict
# on a READY deployment with no replica ready now (e.g. one the fuzz made with 0 replicas).
DOCUMENTED = {"/neural.v1.DeployerService/Predict": "has no ready replica now"}
ROLE_WEIGHTS = ("admin", "admin", "admin", "user", "viewer")


def neural_services() -> list[descriptor.ServiceDescriptor]:
    """Every service declared in the neural.v1 protos, from the generated modules."""
    found = []
    for info in pkgutil.iter_modules(neural.v1.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"neural.v1.{info.name}")
            found += list(module.DESCRIPTOR.services_by_name.values())
    return sorted(found, key=lambda s: s.full_name)


def served_by(address: str) -> set[str]:
    """The services reflection lists that the server's health service reports on: the authz
    server describes every neural.v1 service to tools, but serves only its own, and a server
    reports the health of each service it serves."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        listed: set[str] = set()
        for answer in stub.ServerReflectionInfo(iter([ask]), timeout=10):
            listed = {s.name for s in answer.list_services_response.service}
            break
        health = health_pb2_grpc.HealthStub(channel)
        served = set()
        for name in listed:
            try:
                health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                raise
            served.add(name)
        return served


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str


def _stream(call: Any) -> Outcome:
    """Read a streamed response: its first message, then whatever comes within STREAM_LINGER,
    then cancel (a watch may rightly stay open for ever)."""
    timer: threading.Timer | None = None
    cancelled = threading.Event()

    def cancel() -> None:
        cancelled.set()
        call.cancel()

    try:
        for _ in call:
            if timer is None:
                timer = threading.Timer(STREAM_LINGER, cancel)
                timer.start()
        return Outcome(call.code(), call.details() or "")
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.CANCELLED and cancelled.is_set():
            return Outcome(grpc.StatusCode.OK, "")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Outcome(grpc.StatusCode.OK, "open until the deadline")
        return Outcome(code, exc.details() or "")
    finally:
        if timer is not None:
            timer.cancel()


def invoke(
    channel: grpc.Channel,
    method: descriptor.MethodDescriptor,
    requests: list[Any],
    md: tuple[tuple[str, str], ...],
) -> Outcome:
    path = f"/{method.containing_service.full_name}/{method.name}"
    serialize = message_factory.GetMessageClass(method.input_type).SerializeToString
    parse = message_factory.GetMessageClass(method.output_type).FromString
    deadline = STREAM_DEADLINE if method.server_streaming else UNARY_DEADLINE
    if method.client_streaming:
        body: Any = iter(requests)
        kind = "stream_stream" if method.server_streaming else "stream_unary"
    else:
        body = requests[0]
        kind = "unary_stream" if method.server_streaming else "unary_unary"
    callable_ = getattr(channel, kind)(
        path, request_serializer=serialize, response_deserializer=parse
    )
    if method.server_streaming:
        return _stream(callable_(body, timeout=deadline, metadata=md))
    try:
        callable_(body, timeout=deadline, metadata=md)
    except grpc.RpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "")


def healthy(stack: TrainerStack, name: str) -> bool:
    if stack.procs[name].poll() is not None:
        return False
    with grpc.insecure_channel(stack.address_of(name)) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


class Finding(AssertionError):
    pass


def _merged(base: Message, extra: Message, which: int) -> Message:
    """`base` with one of the fields `extra` sets (the `which`-th, cyclically) merged in."""
    out = type(base)()
    out.CopyFrom(base)
    fields = [f.name for f, _ in extra.ListFields()]
    if fields:
        part = type(extra)()
        part.CopyFrom(extra)
        for name in fields:
            if name != fields[which % len(fields)]:
                part.ClearField(name)
        out.MergeFrom(part)
    return out


def fuzz(
    method: descriptor.MethodDescriptor,
    channel: grpc.Channel,
    pools: Pools,
    creds: dict[str, tuple[tuple[str, str], ...]],
    figures: Figures,
    bases: Sequence[Message] = (),
) -> str:
    """Run one RPC's examples; the shrunk failing example, or "" when none failed. `bases`:
    valid requests, also sent with one field of a generated request merged into them (a
    field set replaces theirs, a repeated one adds to theirs), so that a hostile value
    reaches the code past the checks the other fields of a generated request rarely pass."""
    one = requests(method.input_type, pools)
    if bases:
        valid = st.builds(_merged, st.sampled_from(list(bases)), one, st.integers(0, 20))
        one = st.one_of(one, valid)
    if method.client_streaming:
        messages = st.lists(one, min_size=1, max_size=3)
    else:
        messages = one.map(lambda r: [r])
    stuck = {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE}
    documented = DOCUMENTED.get(f"/{method.containing_service.full_name}/{method.name}")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(messages=messages, role=st.sampled_from(ROLE_WEIGHTS))
    def call(messages: list[Any], role: str) -> None:
        outcome = invoke(channel, method, messages, creds[role])
        figures.examples += 1
        figures.codes[outcome.code.name] = figures.codes.get(outcome.code.name, 0) + 1
        if (
            outcome.code == grpc.StatusCode.UNAVAILABLE
            and documented
            and documented in outcome.details
        ):
            return
        if outcome.code in BAD or (not method.server_streaming and outcome.code in stuck):
            raise Finding(f"{outcome.code.name}: {outcome.details[:300]}")

    try:
        call()
    except Finding as exc:
        example = "\n".join(getattr(exc, "__notes__", []))[:2000]
        return f"{exc}\n{example}"
    return ""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def servers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    tmp: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    name = ""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'neural.db'}"
    else:
        name, url = asyncio.run(create_pg_database())
    stack = fuzz_stack.start(tmp, url, fuzz_stack.SERVERS)
    left: list[int] = []
    try:
        yield request.param, stack
    finally:
        left = fuzz_stack.stop(stack)
        if name:
            asyncio.run(drop_pg_database(name))
    assert not left, f"replica processes outlived the controller: {left}"


def test_no_rpc_ends_internal_and_every_server_keeps_serving(servers: Any) -> None:
    database, stack = servers
    creds = {
        name: {role: fuzz_stack.credentials(name, role) for role in fuzz_stack.ROLES}
        for name in fuzz_stack.SERVERS
    }
    pools = fuzz_stack.seed(stack, creds["tracker"]["admin"])
    # AuthService's requests draw its own records: API keys' ids and secrets, not runs'.
    authz_pools = {**pools, **fuzz_stack.seed_authz(stack, creds["authz"]["admin"])}
    # DeployerService's draw a deployment, ONNX models, a run holding one, small replicas.
    deployer_pools = fuzz_stack.seed_deployer(stack, creds["deployer"]["admin"])
    where = {svc: name for name in fuzz_stack.SERVERS for svc in served_by(stack.address_of(name))}
    figures = Figures(database)
    RECORDED.append(figures)
    findings: list[str] = []
    channels = {name: grpc.insecure_channel(stack.address_of(name)) for name in fuzz_stack.SERVERS}
    for service in neural_services():
        server = where.get(service.full_name)
        if server is None:
            figures.not_served.append(service.name)
            continue
        figures.services.append(service.name)
        for method in service.methods:
            figures.rpcs += 1
            if server == "deployer" and method.name == "Predict":
                # one that serves, not one the RPCs before scaled to 0 or rolled out
                deployer_pools = fuzz_stack.redeploy(
                    stack, creds["deployer"]["admin"], deployer_pools, cold=True
                )
            drawn = {"authz": authz_pools, "deployer": {**pools, **deployer_pools}}.get(
                server, pools
            )
            bases = []
            if server == "deployer":
                valid = fuzz_stack.deployer_requests(
                    stack, creds["deployer"]["admin"], deployer_pools
                )
                bases = valid.get(method.name, [])
            found = fuzz(method, channels[server], drawn, creds[server], figures, bases)
            if found:
                findings.append(f"{service.name}.{method.name}: {found}")
            if not healthy(stack, server):
                pytest.fail(
                    f"{server} stopped serving after {service.name}.{method.name}:\n"
                    + stack.log(server)
                )
            if server == "deployer" and stack.procs["controller"].poll() is not None:
                pytest.fail(
                    f"the deployer's controller exited after {service.name}.{method.name}:\n"
                    + stack.log("controller")
                )
            if server == "deployer" and method.name.startswith("Delete"):
                # the seeded deployment may be gone: make a new one
                deployer_pools = fuzz_stack.redeploy(
                    stack, creds["deployer"]["admin"], deployer_pools
                )
            elif method.name.startswith(("Delete", "Purge")):
                # the records the pools name may be gone: make new ones
                pools = fuzz_stack.seed(stack, creds["tracker"]["admin"])
            elif method.name.startswith(("Revoke", "Rotate")):
                # the seeded keys may be revoked or expiring: make new ones
                fresh = fuzz_stack.seed_authz(stack, creds["authz"]["admin"])
                authz_pools = {**pools, **fresh}
    # The callers' own credentials outlived the run (RevokeApiKey and RotateApiKey reach API
    # keys; the authz callers' tokens are bound to none): an UNAUTHENTICATED midway would have
    # hidden every later AuthService call behind the door.
    auth = auth_pb2_grpc.AuthServiceStub(channels["authz"])
    for role, md in creds["authz"].items():
        who = auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md)
        assert who.subject == f"fuzz-{role}"
    for channel in channels.values():
        channel.close()
    print(figures.line())
    assert figures.services, "no neural.v1 service is served"
    assert not findings, "\n".join(findings)
