"""Load on a deployment with NVIDIA's `tritonclient[grpc]`, as an outside user would make it.

Run by tests/deployer/test_tritonclient_load_e2e.py with `.venv-clients/bin/python`
(tritonclient needs protobuf < 7). CONCURRENCY threads share one InferenceServerClient and call
`infer` with the inputs of INPUTS (.npz, by tensor name) and the headers given, until REQUESTS
calls were made, or, with --stop-file, until that file exists (and at least REQUESTS were made).
No model version is asked for: whichever version the gateway routes to answers, and the
response's `model_version` says which.

Retry: tritonclient 2.73 has no retry of its own; its `channel_args` are handed to
`grpc.insecure_channel` as they are, so the retry a gRPC client normally uses is gRPC's own,
switched on by a service config (`grpc.service_config`, a `retryPolicy` for the inference
service: UNAVAILABLE retried, up to 5 attempts, the most gRPC allows, with exponential backoff;
--attempts 1: no retry, to see what the gateway alone achieves). A call that fails after its
retries counts as failed, under its final status.

--progress FILE is rewritten (atomically) as calls complete: {"done": n, "failed": f}, so a
test can wait for the load to be under way. At the end one JSON object is printed: the counts
by status, the failures' first messages, and per request (in the order they were sent) the
model_version that answered (null for a failed one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

SERVICE = "inference.GRPCInferenceService"
RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
MAX_MESSAGE = 2**31 - 1  # as tritonclient's own defaults: no message size limit
PROGRESS_EVERY = 0.1  # seconds between progress writes


def retry_policy(attempts: int) -> dict | None:
    return {**RETRY_POLICY, "maxAttempts": attempts} if attempts > 1 else None


def channel_args(attempts: int) -> list[tuple[str, object]]:
    """tritonclient's default channel options, plus gRPC's retry for the inference service.
    (Given channel_args, tritonclient uses them alone: the defaults are repeated here.)"""
    policy = retry_policy(attempts)
    if policy is None:
        return [
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ]
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": policy}]}
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
    ]


class Load:
    """The calls to make and what came back, shared by the threads."""

    def __init__(
        self, requests: int, stop_file: Path | None, progress: Path | None, attempts: int
    ) -> None:
        self.requests = requests
        self.attempts = attempts
        self.stop_file = stop_file
        self.progress = progress
        self.lock = threading.Lock()
        self.sent = 0
        self.versions: list[str | None] = []
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.written = 0.0

    def next_index(self) -> int | None:
        """The index of the next call to make, or None when the load is over."""
        with self.lock:
            if self.sent >= self.requests and (self.stop_file is None or self.stop_file.exists()):
                return None
            self.sent += 1
            self.versions.append(None)
            return self.sent - 1

    def record(self, index: int, version: str | None, status: str, error: str = "") -> None:
        with self.lock:
            self.versions[index] = version
            self.statuses[status] += 1
            if error and len(self.errors) < 20:
                self.errors.append(error)
            if self.progress is not None and time.monotonic() - self.written >= PROGRESS_EVERY:
                self.write_progress()

    def write_progress(self) -> None:
        assert self.progress is not None
        done = sum(self.statuses.values())
        tmp = self.progress.with_suffix(".tmp")
        tmp.write_text(json.dumps({"done": done, "failed": done - self.statuses["OK"]}))
        os.replace(tmp, self.progress)
        self.written = time.monotonic()

    def summary(self) -> dict:
        ok = self.statuses["OK"]
        return {
            "requests": len(self.versions),
            "succeeded": ok,
            "failed": len(self.versions) - ok,
            "statuses": dict(self.statuses),
            "errors": self.errors,
            "model_versions": self.versions,
            "version_counts": dict(Counter(v for v in self.versions if v is not None)),
            "retry_policy": retry_policy(self.attempts),
        }


def worker(
    client: grpcclient.InferenceServerClient,
    model: str,
    feeds: dict[str, np.ndarray],
    headers: dict[str, str],
    timeout: float,
    load: Load,
) -> None:
    inputs = []
    for name, array in feeds.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    while (index := load.next_index()) is not None:
        try:
            result = client.infer(
                model,
                inputs,
                request_id=f"load-{index}",
                headers=headers,
                client_timeout=timeout,
            )
        except InferenceServerException as exc:
            load.record(index, None, str(exc.status()), f"{exc.status()}: {exc.message()}")
            continue
        response = result.get_response()
        load.record(index, response.model_version, "OK")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--inputs", required=True, help=".npz of the input tensors, by name")
    p.add_argument("--requests", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--stop-file", type=Path, help="go on past REQUESTS until this file exists")
    p.add_argument("--progress", type=Path, help="rewritten with the calls done so far")
    p.add_argument("--attempts", type=int, default=5, help="per call, at most 5; 1: no retry")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call, retries in")
    p.add_argument("--header", action="append", default=[], help="NAME=VALUE sent with every call")
    args = p.parse_args()
    headers = dict(h.split("=", 1) for h in args.header)
    feeds = dict(np.load(args.inputs))

    load = Load(args.requests, args.stop_file, args.progress, args.attempts)
    client = grpcclient.InferenceServerClient(args.url, channel_args=channel_args(args.attempts))
    threads = [
        threading.Thread(
            target=worker, args=(client, args.model, feeds, headers, args.timeout, load)
        )
        for _ in range(args.concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    if load.progress is not None:
        load.write_progress()
    json.dump(load.summary(), sys.stdout)
    print()


if __name__ == "__main__":
    main()
