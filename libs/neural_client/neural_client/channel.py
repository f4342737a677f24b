"""One gRPC channel to the gateway, with reads retried on UNAVAILABLE.

The retry policy is gRPC's own (a service config on the channel): it applies to the read RPCs
named here only, so a write is never sent twice."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import grpc

DEFAULT_URL = "127.0.0.1:8080"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Reads: safe to repeat. Streams are retried only until their first answer, as gRPC does.
READS = {
    "neural.v1.CompilerService": [
        "Validate", "GetCompileJob", "ListCompileJobs", "ListModels", "GetModel", "DownloadModel",
        "WatchCompileJob",
    ],
    "neural.v1.TrainerService": [
        "GetTrainingJob", "ListTrainingJobs", "WatchTrainingJob", "ListDatasets", "GetDataset",
    ],
    "neural.v1.TrackerService": [
        "ListExperiments", "GetExperiment", "CompareExperiments", "GetRun", "GetMetricHistory",
        "SearchRuns", "CompareRuns", "PlotMetrics", "ListArtifacts", "DownloadArtifact",
        "WatchRun",
    ],
    "neural.v1.DeployerService": [
        "ListDeployments", "GetDeployment", "GetRolloutJob", "ListRolloutJobs", "Predict",
    ],
    "neural.v1.AuthService": ["ListApiKeys", "WhoAmI"],
}  # fmt: skip

RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config() -> str:
    names = [{"service": s, "method": m} for s, methods in READS.items() for m in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


def target(url: str) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `host:port`, `http://...` or `https://...`."""
    url = url.strip()
    if "://" not in url:
        return url.rstrip("/"), False
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https", "grpc", "grpcs") or not parsed.hostname:
        raise ValueError(f"NEURAL_URL must be host:port or http(s)://host:port, got {url!r}")
    secure = parsed.scheme in ("https", "grpcs")
    port = parsed.port or (443 if secure else 80)
    return f"{parsed.hostname}:{port}", secure


def open_channel(url: str) -> grpc.Channel:
    address, secure = target(url)
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config()),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    if secure:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)
