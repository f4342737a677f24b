"""Calls a replica with KServe's own V2 gRPC client (`kserve.InferenceGRPCClient`), unchanged.

Run by tests/deployer/test_replica_clients.py with `.venv-clients/bin/python` (kserve's
stubs need protobuf < 7, so it lives in a venv of its own, made by `make setup`). Same CLI and
checks as triton_check.py: live/ready, the model's readiness and metadata, one inference with the
inputs of INPUTS (.npz, by tensor name) compared with EXPECTED (.npz) exactly, then a wrong
datatype that must come back INVALID_ARGUMENT naming the input. It prints one JSON object (the
metadata and what it checked); any mismatch exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.logging import trace_logger
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput
from kserve.utils.numpy_codec import from_np_dtype


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def tensor(name: str, array: np.ndarray, datatype: str | None = None) -> InferInput:
    """An input sent as raw bytes (KServe's default for gRPC), as KServe's users build one."""
    result = InferInput(name, list(array.shape), datatype or from_np_dtype(array.dtype))
    result.set_data_from_numpy(array)
    return result


async def metadata_of(url: str, model: str, version: str, headers: list[tuple[str, str]]) -> dict:
    # InferenceGRPCClient has no ModelMetadata call; KServe's generated stub for the same
    # service has, so the metadata still travels through KServe's own protocol code.
    async with grpc.aio.insecure_channel(url) as channel:
        stub = GRPCInferenceServiceStub(channel)
        request = pb.ModelMetadataRequest(name=model, version=version)
        response = await stub.ModelMetadata(request, metadata=headers, timeout=60)
    return MessageToDict(response, preserving_proto_field_name=True)


async def check(args: argparse.Namespace) -> dict:
    # Through the gateway: the deployment to route to, and the caller's API key.
    headers = [tuple(h.split("=", 1)) for h in args.header]
    async with InferenceGRPCClient(args.url, timeout=60) as client:
        live = await client.is_server_live(headers=headers)
        if not (live and await client.is_server_ready(headers=headers)):
            fail("server not live and ready")
        # KServe's client asks for a model's readiness by name only (no version).
        if not await client.is_model_ready(args.model, headers=headers):
            fail("model not ready")
        metadata = await metadata_of(args.url, args.model, args.version, headers)

        feeds = dict(np.load(args.inputs))
        inputs = [tensor(name, array) for name, array in feeds.items()]
        request = InferRequest(
            args.model,
            inputs,
            request_id="kserve-1",
            request_outputs=[RequestedOutput(n) for n in args.outputs] or None,
            model_version=args.version,
        )
        response = await client.infer(request, headers=headers)
        if response.id != "kserve-1":
            fail(f"request id not echoed: {response.id!r}")
        expected = dict(np.load(args.expected))
        names = [o.name for o in response.outputs]
        if names != list(expected):
            fail(f"outputs {names}, expected {list(expected)}")
        for output in response.outputs:
            got, want = output.as_numpy(), expected[output.name]
            if got.dtype != want.dtype or not np.array_equal(got, want):
                fail(f"output {output.name}: {got!r} != {want!r}")

        # a caller's mistake comes back as the protocol's INVALID_ARGUMENT, naming the input
        name, array = next(iter(feeds.items()))
        wrong = tensor(name, array.astype(np.float64), "FP64")
        others = [t for t in inputs if t.name != name]
        # KServe logs every failed call with its traceback; this failure is the expected one
        trace_logger.disabled = True
        try:
            await client.infer(
                InferRequest(args.model, [wrong, *others], model_version=args.version),
                headers=headers,
            )
            fail("a wrong datatype was accepted")
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT or repr(name) not in exc.details():
                fail(f"wrong datatype: {exc.code()} {exc.details()}")

    return {"metadata": metadata, "outputs": names}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--outputs", nargs="*", default=[], help="requested outputs (default all)")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE sent with every call")
    print(json.dumps(asyncio.run(check(p.parse_args()))))


if __name__ == "__main__":
    main()
