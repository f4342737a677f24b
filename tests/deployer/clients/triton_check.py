"""Calls a replica with NVIDIA's `tritonclient[grpc]`, as an outside user would.

Run by tests/deployer/test_replica_clients.py with `.venv-clients/bin/python` (tritonclient
needs protobuf < 7, so it lives in a venv of its own, made by `make setup`). It checks live/ready,
reads the model's metadata, runs one inference with the inputs of INPUTS (.npz, by tensor name)
and compares each output with EXPECTED (.npz) exactly, then sends a wrong datatype and checks the
error. It prints one JSON object (the metadata and what it checked); any mismatch exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--inputs", required=True)
    p.add_argument("--expected", required=True)
    p.add_argument("--outputs", nargs="*", default=[], help="requested outputs (default all)")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE sent with every call")
    args = p.parse_args()
    # Through the gateway: the deployment to route to, and the caller's API key.
    headers = dict(h.split("=", 1) for h in args.header) or None

    client = grpcclient.InferenceServerClient(args.url)
    if not (client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)):
        fail("server not live and ready")
    if not client.is_model_ready(args.model, args.version, headers=headers):
        fail("model not ready")
    metadata = client.get_model_metadata(args.model, args.version, headers=headers, as_json=True)

    feeds = dict(np.load(args.inputs))
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = [grpcclient.InferRequestedOutput(n) for n in args.outputs] or None
    result = client.infer(
        args.model,
        inputs,
        model_version=args.version,
        outputs=requested,
        request_id="triton-1",
        headers=headers,
    )
    response = result.get_response()
    if response.id != "triton-1":
        fail(f"request id not echoed: {response.id!r}")
    expected = dict(np.load(args.expected))
    if [o.name for o in response.outputs] != list(expected):
        fail(f"outputs {[o.name for o in response.outputs]}, expected {list(expected)}")
    for name, want in expected.items():
        got = result.as_numpy(name)
        if got.dtype != want.dtype or not np.array_equal(got, want):
            fail(f"output {name}: {got!r} != {want!r}")

    # a caller's mistake comes back as the protocol's INVALID_ARGUMENT, naming the input
    name, array = next(iter(feeds.items()))
    wrong = grpcclient.InferInput(name, list(array.shape), "FP64")
    wrong.set_data_from_numpy(array.astype(np.float64))
    others = [t for t in inputs if t.name() != name]
    try:
        client.infer(args.model, [wrong, *others], model_version=args.version, headers=headers)
        fail("a wrong datatype was accepted")
    except InferenceServerException as exc:
        if exc.status() != "StatusCode.INVALID_ARGUMENT" or repr(name) not in exc.message():
            fail(f"wrong datatype: {exc.status()} {exc.message()}")

    print(json.dumps({"metadata": metadata, "outputs": list(expected)}))


if __name__ == "__main__":
    main()
