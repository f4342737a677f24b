"""Kubernetes manifests for one deployment (issue 13, item 3): what `RenderManifests` returns.

`render_manifests(spec)` gives a multi-document YAML stream, ready for `kubectl apply -f -`:
a Service (ClusterIP, port `grpc`, h2c), a Deployment running the model-server image, a
HorizontalPodAutoscaler (autoscaling/v2, on CPU, only when min_replicas < max_replicas) and a
PodDisruptionBudget (policy/v1). `build_objects(spec)` gives the same objects as dicts.

Where the model comes from: the replica reads the ONNX file from a PersistentVolumeClaim
(`model_claim`, default "neural-models") mounted read-only at /models; `model_path` is the
file's path inside that claim. The claim is meant to be the platform's storage directory
(NEURAL_STORAGE_DIR on a ReadOnlyMany/ReadWriteMany volume), where the deployer server
already stores each version as `deployments/<deployment id>/<version>/model.onnx`, so the
cluster serves the very file that was checked at create time, with no copy and no credentials
in the pod (an init container downloading from the platform would need a token).

The pod runs `python -m services.deployer.replica --model /models/<model_path> ...` on port
8001, bound to 0.0.0.0 (the kubelet's probes and the Service reach the pod IP). The replica
serves grpc.health.v1, SERVING once the onnxruntime session is loaded: the startup probe waits
for that for up to `startup_timeout_seconds`, then readiness (service
"inference.GRPCInferenceService") gates traffic and liveness (service "") restarts a hung one.
On SIGTERM the replica drains in-flight calls for up to 5 s; a preStop sleep first lets the
endpoint removal reach every proxy, and the grace period covers both.

With an HPA the Deployment leaves `replicas` unset, as Kubernetes advises, so that re-applying
the manifests does not fight the autoscaler; the HPA lifts it to min_replicas at once.

Every object is built as a dict and dumped by PyYAML's safe dumper, quoting every string that
any YAML reader (Go's included) could take for a number, boolean or null; every input is
validated first (ValueError naming the field), so no value can add YAML keys or documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

DEFAULT_IMAGE = "neural/model-server:0.1.0"
PORT = 8001
MODEL_MOUNT = "/models"
RUN_AS = 10001
REPLICA_DRAIN_SECONDS = 5  # the replica's grace for in-flight calls after SIGTERM
PRE_STOP_SLEEP_SECONDS = 5  # endpoint removal reaches kube-proxy/Envoy before the drain
STARTUP_PERIOD_SECONDS = 5
READINESS_SERVICE = "inference.GRPCInferenceService"
PUBLIC_KEY_DIR = "/etc/neural/authz"
PUBLIC_KEY_FILE = "authz_public.pem"  # the key's name inside `authz_public_key_secret`

# A Service's name must be a DNS-1035 label (it begins with a letter); the other objects
# accept it too, so one rule covers the deployment's name.
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
# A positive Kubernetes quantity: a decimal number with a binary-SI, decimal-SI or exponent
# suffix ("500m", "1.5", "2Gi", "1e3"); no sign, ASCII digits only.
QUANTITY = re.compile(
    r"(?P<num>[0-9]+(\.[0-9]*)?|\.[0-9]+)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)
_MULTIPLIERS = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{
        s: Decimal(10) ** e
        for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
}
# An image reference: [registry[:port]/]path[:tag][@digest], as the distribution spec has it.
_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
_HOST = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*"
IMAGE = re.compile(
    rf"({_HOST}(:[0-9]+)?/)?{_COMPONENT}(/{_COMPONENT})*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@[a-z0-9]+([+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?"
)
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
# A string left plain (unquoted) in the YAML: one no reader can take for a number, boolean or
# null. PyYAML quotes by YAML 1.1 rules only, so it writes "1e3" or "y" plain, which kubectl's
# Go parsers read as 1000 and true; everything else is single-quoted.
_PLAIN = re.compile(r"(--)?[A-Za-z/][A-Za-z0-9._/-]*")
_NOT_STRINGS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper, quoting every string that is not plainly a string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    plain = _PLAIN.fullmatch(value) and value.lower() not in _NOT_STRINGS
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=None if plain else "'")


_Dumper.add_representer(str, _represent_str)


@dataclass(frozen=True)
class ManifestSpec:
    """One deployment's version as the cluster serves it; validated on construction.

    name: the deployment's name (DNS-1035 label, at most 63): names every object, and is the
        OIP model_name the replica answers to. version: the version id (a label value, e.g.
        "v2"). model_path: the ONNX file inside `model_claim` (relative, "/"-separated),
        e.g. "deployments/<deployment id>/v2/model.onnx".
    min_replicas/max_replicas: 1 <= min <= max <= 1000; an HPA on CPU between them when
        min < max, a fixed replica count otherwise.
    cpu/memory: requests as Kubernetes quantities; cpu_limit/memory_limit default to them
        (a Guaranteed pod unless set higher). gpus: the nvidia.com/gpu limit (0 = none).
    max_batch_size/max_batch_delay_us/threads: the replica's batching and onnxruntime threads.
    authz_public_key_secret: a Secret with key "authz_public.pem"; when set, the replica
        requires internal tokens (NEURAL_AUTHZ_PUBLIC_KEY_FILE).
    """

    name: str
    version: str
    model_path: str
    namespace: str = "neural"
    image: str = DEFAULT_IMAGE
    model_claim: str = "neural-models"
    min_replicas: int = 1
    max_replicas: int = 1
    target_cpu_utilization: int = 70
    cpu: str = "1"
    memory: str = "1Gi"
    cpu_limit: str | None = None
    memory_limit: str | None = None
    gpus: int = 0
    max_batch_size: int = 1
    max_batch_delay_us: int = 0
    threads: int = 1
    startup_timeout_seconds: int = 300
    termination_grace_seconds: int = 30
    authz_public_key_secret: str | None = None

    def __post_init__(self) -> None:
        _match("name", self.name, DNS1035_LABEL, 63, "a DNS-1035 label (a-z, 0-9, '-')")
        _match("version", self.version, LABEL_VALUE, 63, "a label value (A-Z, a-z, 0-9, -_.)")
        _match("namespace", self.namespace, DNS1123_LABEL, 63, "a DNS-1123 label")
        _match("image", self.image, IMAGE, 512, "an image reference like repo/name:tag")
        _match("model_claim", self.model_claim, DNS1123_SUBDOMAIN, 253, "a DNS-1123 subdomain")
        if self.authz_public_key_secret is not None:
            _match(
                "authz_public_key_secret",
                self.authz_public_key_secret,
                DNS1123_SUBDOMAIN,
                253,
                "a DNS-1123 subdomain",
            )
        _check_model_path(self.model_path)
        _int("min_replicas", self.min_replicas, 1, 1000)
        _int("max_replicas", self.max_replicas, self.min_replicas, 1000)
        _int("target_cpu_utilization", self.target_cpu_utilization, 1, 100)
        _int("gpus", self.gpus, 0, 64)
        _int("max_batch_size", self.max_batch_size, 1, 65536)
        _int("max_batch_delay_us", self.max_batch_delay_us, 0, 10_000_000)
        _int("threads", self.threads, 1, 1024)
        _int("startup_timeout_seconds", self.startup_timeout_seconds, STARTUP_PERIOD_SECONDS, 3600)
        drain = PRE_STOP_SLEEP_SECONDS + REPLICA_DRAIN_SECONDS
        _int("termination_grace_seconds", self.termination_grace_seconds, drain + 1, 3600)
        for field, request, limit in (
            ("cpu_limit", self.cpu, self.cpu_limit),
            ("memory_limit", self.memory, self.memory_limit),
        ):
            low = parse_quantity(field.removesuffix("_limit"), request)
            if limit is not None and parse_quantity(field, limit) < low:
                raise ValueError(f"{field}: {limit!r} is below the request {request!r}")

    @property
    def autoscaled(self) -> bool:
        return self.min_replicas < self.max_replicas


def render_manifests(spec: ManifestSpec) -> str:
    """The Service, Deployment, HPA (when autoscaled) and PDB of `spec` as one YAML stream,
    each document starting with "---"; feed it to `kubectl apply -f -`."""
    objects = build_objects(spec)
    return yaml.dump_all(objects, Dumper=_Dumper, explicit_start=True, sort_keys=False)


def build_objects(spec: ManifestSpec) -> list[dict[str, Any]]:
    """The objects `render_manifests` dumps, in apply order."""
    objects = [_service(spec), _deployment(spec)]
    if spec.autoscaled:
        objects.append(_hpa(spec))
    objects.append(_pdb(spec))
    return objects


def labels(spec: ManifestSpec) -> dict[str, str]:
    """The recommended labels every object and pod carries."""
    return {
        **selector(spec),
        "app.kubernetes.io/version": spec.version,
        "app.kubernetes.io/part-of": "neural",
        "app.kubernetes.io/managed-by": "neural-deployer",
    }


def selector(spec: ManifestSpec) -> dict[str, str]:
    """The labels that pick the deployment's pods: stable across versions, since a
    Deployment's selector cannot change and a new version rolls over the same pods."""
    return {
        "app.kubernetes.io/name": spec.name,
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "model-server",
    }


def _metadata(spec: ManifestSpec) -> dict[str, Any]:
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)}


def _service(spec: ManifestSpec) -> dict[str, Any]:
    port = {
        "name": "grpc",
        "port": PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "kubernetes.io/h2c",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {"type": "ClusterIP", "selector": selector(spec), "ports": [port]},
    }


def _deployment(spec: ManifestSpec) -> dict[str, Any]:
    deployment_spec: dict[str, Any] = {}
    if not spec.autoscaled:
        deployment_spec["replicas"] = spec.min_replicas
    deployment_spec |= {
        "selector": {"matchLabels": selector(spec)},
        # a new version comes up beside the old one: capacity never drops during a rollout
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": spec.startup_timeout_seconds + 300,
        "template": {"metadata": {"labels": labels(spec)}, "spec": _pod(spec)},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec),
        "spec": deployment_spec,
    }


def _pod(spec: ManifestSpec) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {
            "name": "model",
            "persistentVolumeClaim": {"claimName": spec.model_claim, "readOnly": True},
        },
    ]
    if spec.authz_public_key_secret is not None:
        volumes.append(
            {
                "name": "authz-public-key",
                "secret": {
                    "secretName": spec.authz_public_key_secret,
                    "items": [{"key": PUBLIC_KEY_FILE, "path": PUBLIC_KEY_FILE}],
                },
            }
        )
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the replica never calls the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": spec.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                # prefer spreading, but a small cluster may still run every replica
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(spec)},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ],
        "containers": [_container(spec)],
        "volumes": volumes,
    }
    if spec.gpus:
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return pod


def _container(spec: ManifestSpec) -> dict[str, Any]:
    args = [
        "--model", f"{MODEL_MOUNT}/{spec.model_path}",
        "--model-name", spec.name,
        "--model-version", spec.version,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--max-batch-size", str(spec.max_batch_size),
        "--max-batch-delay-us", str(spec.max_batch_delay_us),
        "--threads", str(spec.threads),
    ]  # fmt: skip
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},  # the root filesystem is read-only
        {"name": "OMP_NUM_THREADS", "value": str(spec.threads)},
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True},
    ]
    if spec.authz_public_key_secret is not None:
        env.append(
            {"name": "NEURAL_AUTHZ_PUBLIC_KEY_FILE", "value": f"{PUBLIC_KEY_DIR}/{PUBLIC_KEY_FILE}"}
        )
        mounts.append({"name": "authz-public-key", "mountPath": PUBLIC_KEY_DIR, "readOnly": True})
    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = {"cpu": spec.cpu_limit or spec.cpu, "memory": spec.memory_limit or spec.memory}
    if spec.gpus:
        limits["nvidia.com/gpu"] = str(spec.gpus)
    return {
        "name": "model-server",
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "services.deployer.replica"],
        "args": args,
        "ports": [{"name": "grpc", "containerPort": PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": {
            "grpc": {"port": PORT, "service": ""},
            "periodSeconds": STARTUP_PERIOD_SECONDS,
            "timeoutSeconds": 2,
            "failureThreshold": -(-spec.startup_timeout_seconds // STARTUP_PERIOD_SECONDS),
        },
        "readinessProbe": {
            "grpc": {"port": PORT, "service": READINESS_SERVICE},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "grpc": {"port": PORT, "service": ""},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SLEEP_SECONDS}}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _hpa(spec: ManifestSpec) -> dict[str, Any]:
    target = {"type": "Utilization", "averageUtilization": spec.target_cpu_utilization}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.min_replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": target}}],
            # a cooldown: a short lull does not drop replicas that a burst needs again
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def _pdb(spec: ManifestSpec) -> dict[str, Any]:
    # minAvailable 1 would block every node drain of a single-replica deployment
    budget = {"minAvailable": 1} if spec.min_replicas > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {
            **budget,
            "selector": {"matchLabels": selector(spec)},
            # a crash-looping pod may be evicted even when the budget is spent
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def _match(field: str, value: object, pattern: re.Pattern[str], max_len: int, what: str) -> None:
    if not isinstance(value, str) or len(value) > max_len or not pattern.fullmatch(value):
        raise ValueError(f"{field}: {value!r} is not {what} of at most {max_len} characters")


def _int(field: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: {value!r} is not an integer in [{low}, {high}]")


def parse_quantity(field: str, value: object) -> Decimal:
    """The quantity's value; ValueError naming `field` unless it is a positive quantity."""
    m = QUANTITY.fullmatch(value) if isinstance(value, str) and len(value) <= 64 else None
    if m is None:
        raise ValueError(f"{field}: {value!r} is not a Kubernetes quantity such as 500m or 2Gi")
    suffix = m["suffix"] or ""
    if suffix and suffix not in _MULTIPLIERS:  # an exponent ("e3"); "E" and "Ei" are units
        exponent = int(suffix[1:])
        if abs(exponent) > 30:
            raise ValueError(f"{field}: {value!r} has an exponent out of range")
        scale = Decimal(10) ** exponent
    else:
        scale = _MULTIPLIERS.get(suffix, Decimal(1))
    amount = Decimal(m["num"]) * scale
    if amount <= 0:
        raise ValueError(f"{field}: {value!r} must be above zero")
    return amount


def _check_model_path(value: object) -> None:
    ok = (
        isinstance(value, str)
        and len(value) <= 1024
        and all(p not in (".", "..") and PATH_SEGMENT.fullmatch(p) for p in value.split("/"))
    )
    if not ok:
        raise ValueError(
            f"model_path: {value!r} must be a relative '/'-separated path inside the claim, "
            "segments of letters, digits and ._- (not starting with '.' or '-')"
        )
