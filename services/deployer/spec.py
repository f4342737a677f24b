"""A CreateDeploymentRequest checked field by field, and stored rows back as protos.

Every caller's mistake is INVALID_ARGUMENT naming the field, never a row that fails later."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2
from neural.v1 import deployer_pb2
from service_kit import errors

from .manifests import parse_quantity
from .store import Deployment, Version

MAX_REPLICAS = 100
MAX_BATCH_SIZE = 1024
MAX_BATCH_DELAY_US = 1_000_000
DEFAULT_BATCH_SIZE = 64
MAX_GPUS = 16
# A DNS-1123 label that starts with a letter (a DNS-1035 label): it names the route and the
# Kubernetes objects, and a Service's name must start with a letter.
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

STATES = {
    "PENDING": deployer_pb2.DEPLOYMENT_STATE_PENDING,
    "READY": deployer_pb2.DEPLOYMENT_STATE_READY,
    "FAILED": deployer_pb2.DEPLOYMENT_STATE_FAILED,
    "DELETING": deployer_pb2.DEPLOYMENT_STATE_DELETING,
}
STATE_NAMES = {v: k for k, v in STATES.items()}
VERSION_STATES = {
    "PENDING": deployer_pb2.DEPLOYMENT_VERSION_STATE_PENDING,
    "SERVING": deployer_pb2.DEPLOYMENT_VERSION_STATE_SERVING,
    "FAILED": deployer_pb2.DEPLOYMENT_VERSION_STATE_FAILED,
    "RETIRED": deployer_pb2.DEPLOYMENT_VERSION_STATE_RETIRED,
}


def bad(field: str, why: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"{field}: {why}", [errors.FieldViolation(field, why)])


@dataclass
class Source:
    """Where a version's model comes from: a run's artifact or a compiler model."""

    run_id: str = ""
    artifact_path: str = ""
    model_id: str = ""
    prefix: str = "deployment."  # where the request holds it

    @property
    def field(self) -> str:
        """The request field a problem with the model is reported on."""
        return self.prefix + ("model_id" if self.model_id else "run_artifact")


def check_replicas(replicas: int, field: str = "replicas") -> int:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise bad(field, f"between 0 and {MAX_REPLICAS}, got {replicas}")
    return replicas


def check_name(name: str) -> str:
    if not DNS_LABEL.fullmatch(name):  # not match: "$" also matches before a final "\n"
        raise bad(
            "deployment.name",
            "a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting with a "
            f"letter and ending with a letter or digit, got {errors.shown(name)}",
        )
    return name


def source(d: Any, prefix: str = "deployment.") -> Source:
    """The model of a Deployment or a RolloutDeploymentRequest (`prefix`: where it sits)."""
    which = d.WhichOneof("model")
    if which == "run_artifact":
        ref = d.run_artifact
        if not RUN_ID.fullmatch(ref.run_id):
            raise bad(f"{prefix}run_artifact.run_id", "a run id is required")
        if not ref.path or len(ref.path) > 1000:
            raise bad(f"{prefix}run_artifact.path", "the artifact's path, e.g. model.onnx")
        return Source(run_id=ref.run_id, artifact_path=ref.path, prefix=prefix)
    if which == "model_id":
        if not RUN_ID.fullmatch(d.model_id):
            raise bad(f"{prefix}model_id", f"not a model id: {errors.shown(d.model_id)}")
        return Source(model_id=d.model_id, prefix=prefix)
    raise bad(f"{prefix}model", "required: run_artifact or model_id")


def settings(d: Any) -> dict[str, Any]:
    """The deployment's columns from the request, checked (the model is checked apart)."""
    check_name(d.name)
    if d.runtime not in (
        deployer_pb2.DEPLOYMENT_RUNTIME_UNSPECIFIED,
        deployer_pb2.DEPLOYMENT_RUNTIME_ONNX,
    ):
        raise bad("deployment.runtime", "only ONNX models are served")
    # Unset at creation is one replica (a deployment is made to serve); 0 is none.
    replicas = check_replicas(d.replicas if d.HasField("replicas") else 1, "deployment.replicas")
    low, high = d.min_replicas, d.max_replicas
    if low or high:
        check_replicas(low, "deployment.min_replicas")
        check_replicas(high, "deployment.max_replicas")
        if high < 1 or low > high:
            raise bad("deployment.max_replicas", f"at least min_replicas ({low}) and 1")
        if not low <= replicas <= high:
            replicas = min(max(replicas, low), high)
    size, delay = d.batching.max_batch_size, d.batching.max_batch_delay_us
    if not 0 <= size <= MAX_BATCH_SIZE:
        raise bad("deployment.batching.max_batch_size", f"between 0 and {MAX_BATCH_SIZE}")
    if not 0 <= delay <= MAX_BATCH_DELAY_US:
        raise bad("deployment.batching.max_batch_delay_us", f"between 0 and {MAX_BATCH_DELAY_US}")
    size = size or DEFAULT_BATCH_SIZE
    r = d.resources
    for name in ("cpu", "memory"):
        value = getattr(r, name)
        if value and not _quantity(value):
            raise bad(
                f"deployment.resources.{name}",
                f"a Kubernetes quantity such as 500m or 512Mi, got {errors.shown(value)}",
            )
    if not 0 <= r.gpu <= MAX_GPUS:
        raise bad("deployment.resources.gpu", f"between 0 and {MAX_GPUS}")
    return {
        "name": d.name,
        "runtime": "onnx",
        "replicas": replicas,
        "min_replicas": low,
        "max_replicas": high,
        "max_batch_size": size,
        "max_batch_delay_us": delay,
        "cpu": r.cpu,
        "memory": r.memory,
        "gpu": r.gpu,
    }


def _quantity(value: str) -> bool:
    """A positive Kubernetes quantity, e.g. "500m", "1.5", "512Mi", "1e3", by the rule
    RenderManifests renders it with: one it would refuse is refused here, at the door."""
    try:
        return len(value) <= 32 and parse_quantity("", value) > 0
    except (ValueError, ArithmeticError):
        return False


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _version(v: Version) -> deployer_pb2.DeploymentVersion:
    out = deployer_pb2.DeploymentVersion(
        id=v.version,
        traffic_percent=v.traffic_percent,
        state=VERSION_STATES[v.state],
        ready_replicas=v.ready_replicas,
        error=v.error,
        create_time=_ts(v.created_at),
        rollout_job_id=v.rollout_job_id,
    )
    if v.model_id:
        out.model_id = v.model_id
    else:
        out.run_artifact.run_id, out.run_artifact.path = v.run_id, v.artifact_path
    return out


def to_proto(d: Deployment) -> deployer_pb2.Deployment:
    out = deployer_pb2.Deployment(
        id=d.id,
        name=d.name,
        runtime=deployer_pb2.DEPLOYMENT_RUNTIME_ONNX,
        replicas=d.replicas,
        ready_replicas=d.ready_replicas,
        state=STATES[d.state],
        error=d.error,
        endpoint=d.endpoint,
        resources=deployer_pb2.DeploymentResources(cpu=d.cpu, memory=d.memory, gpu=d.gpu),
        owner=d.owner,
        create_time=_ts(d.created_at),
        update_time=_ts(d.updated_at),
        min_replicas=d.min_replicas,
        max_replicas=d.max_replicas,
        batching=deployer_pb2.DeploymentBatching(
            max_batch_size=d.max_batch_size, max_batch_delay_us=d.max_batch_delay_us
        ),
        versions=[_version(v) for v in d.versions],
        # versions are newest first: the first with a job is the newest rollout
        rollout_job_id=next((v.rollout_job_id for v in d.versions if v.rollout_job_id), ""),
    )
    live = [v for v in d.versions if v.state in ("PENDING", "SERVING")]
    if live:
        main = max(live, key=lambda v: v.traffic_percent)
        out.model_version = main.version
        # the deployment's own model: the version serving most of its traffic
        if main.model_id:
            out.model_id = main.model_id
        else:
            out.run_artifact.run_id, out.run_artifact.path = main.run_id, main.artifact_path
    return out


def manifest_spec(d: Deployment, env: dict[str, str]) -> Any:
    """The Kubernetes rendering of a deployment's main version (services.deployer.manifests).
    The cluster reads the model from a claim holding the platform's storage directory, at the
    path the deployer stored it under. A fixed count of 0 renders as 1: a Kubernetes
    Deployment of the model is meant to serve."""
    from .manifests import ManifestSpec

    live = [v for v in d.versions if v.state in ("PENDING", "SERVING")]
    if not live:
        raise errors.FailedPrecondition(f"deployment {errors.shown(d.name)} serves no version")
    main = max(live, key=lambda v: v.traffic_percent)
    if d.max_replicas:
        low, high = max(d.min_replicas, 1), d.max_replicas
    else:
        low = high = max(d.replicas, 1)
    options: dict[str, Any] = {}
    for key, name in (
        ("namespace", "NEURAL_DEPLOYER_K8S_NAMESPACE"),
        ("image", "NEURAL_DEPLOYER_K8S_IMAGE"),
        ("model_claim", "NEURAL_DEPLOYER_K8S_MODEL_CLAIM"),
        ("authz_public_key_secret", "NEURAL_DEPLOYER_K8S_AUTHZ_SECRET"),
    ):
        if env.get(name):
            options[key] = env[name]
    try:
        return ManifestSpec(
            name=d.name,
            version=main.version,
            model_path=f"deployments/{d.id}/{main.version}/model.onnx",
            min_replicas=low,
            max_replicas=high,
            cpu=d.cpu or "1",
            memory=d.memory or "1Gi",
            gpus=d.gpu,
            max_batch_size=max(d.max_batch_size, 1),
            max_batch_delay_us=d.max_batch_delay_us,
            **options,
        )
    except ValueError as exc:
        raise errors.FailedPrecondition(f"the deployment cannot be rendered: {exc}") from None
