"""`python -m service_kit.healthcheck HOST:PORT [--service NAME] [--timeout S]`: one gRPC health
Check (grpc.health.v1), for a container's healthcheck (docker compose) where no grpc probe
exists. Exit 0 only when the server answers SERVING; 1 otherwise (not serving, unknown service,
nothing listening, deadline passed), with one line on stderr saying why."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(target: str, service: str = "", timeout: float = 3.0) -> int:
    """The status `target` reports for `service` ("" = the server as a whole)."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return reply.status


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m service_kit.healthcheck", description=__doc__)
    ap.add_argument("address", help="HOST:PORT of the gRPC server")
    ap.add_argument("--service", default="", help="the service to ask about (default: the server)")
    ap.add_argument("--timeout", type=float, default=3.0, help="seconds for the call (3)")
    args = ap.parse_args(argv)
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as e:  # a grpc.Call as well: it has code() and details()
        code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        line = " ".join(f"{code}: {details or 'no details'}".split())  # one line, always
        print(f"{args.address}: {line}", file=sys.stderr)
        return 1
    if status != SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        print(f"{args.address}: {name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
