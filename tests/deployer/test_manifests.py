"""The Kubernetes manifests of a deployment: schema-valid under `kubernetes-validate --strict`,
kept whole by `kubectl kustomize`, and closed to YAML injection from any field."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.deployer.manifests import (
    PRE_STOP_SLEEP_SECONDS,
    REPLICA_DRAIN_SECONDS,
    ManifestSpec,
    build_objects,
    parse_quantity,
    render_manifests,
)

KUBERNETES = "1.32.0"  # the schemas validated against (kubectl on the machine is 1.32 too)

SPECS = {
    "single": ManifestSpec(
        name="digits", version="v1", model_path="deployments/0b6f2c1e/v1/model.onnx"
    ),
    "autoscaled-gpu": ManifestSpec(
        name="resnet-50",
        version="v2",
        model_path="deployments/7d1a/v2/model.onnx",
        namespace="serving",
        image="registry.example.com:5000/neural/model-server:1.2.3@sha256:" + "ab" * 32,
        model_claim="platform-storage",
        min_replicas=2,
        max_replicas=8,
        target_cpu_utilization=60,
        cpu="500m",
        memory="512Mi",
        cpu_limit="2",
        memory_limit="1Gi",
        gpus=1,
        max_batch_size=32,
        max_batch_delay_us=2000,
        threads=4,
        startup_timeout_seconds=900,
        termination_grace_seconds=45,
        authz_public_key_secret="neural-authz",
    ),
    "fixed-three": ManifestSpec(
        name="m", version="1.0", model_path="m.onnx", min_replicas=3, max_replicas=3, cpu="1.5"
    ),
    # values YAML 1.1 would read as booleans, null or numbers unless quoted
    "lookalikes": ManifestSpec(
        name="on", version="true", model_path="0x10/null/model.onnx", memory="1e9"
    ),
    "autoscaled-from-one": ManifestSpec(
        name="yes", version="1e3", model_path="a/b.onnx", min_replicas=1, max_replicas=2
    ),
    # plain for PyYAML (YAML 1.1), numbers or booleans for Go's YAML readers
    "go-lookalikes": ManifestSpec(name="y", version="0o17", model_path="1e3", cpu="2e0"),
    "more-lookalikes": ManifestSpec(name="n", version="1_000", model_path="y/n"),
}


def objects_of(text: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(text))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def container(spec: ManifestSpec) -> dict[str, Any]:
    (main,) = by_kind(build_objects(spec))["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_object_is_valid_under_the_strict_schemas(spec: ManifestSpec) -> None:
    text = render_manifests(spec)
    objects = objects_of(text)
    assert objects == build_objects(spec)  # the YAML says exactly what the dicts say
    expected = ["Service", "Deployment"]
    expected += ["HorizontalPodAutoscaler"] if spec.autoscaled else []
    assert [o["kind"] for o in objects] == [*expected, "PodDisruptionBudget"]
    assert text.startswith("---\n") and text.count("\n---\n") == len(objects) - 1
    for obj in objects:
        assert obj["metadata"]["name"] == spec.name
        assert obj["metadata"]["namespace"] == spec.namespace
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_strict_validator_rejects_an_unknown_field() -> None:
    """The check above is only worth something if strict mode catches a stray key."""
    deployment = copy.deepcopy(by_kind(build_objects(SPECS["single"]))["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_kubectl_kustomize_keeps_every_object(tmp_path: Path) -> None:
    expected: list[dict[str, Any]] = []
    for i, spec in enumerate(SPECS.values()):
        (tmp_path / f"{i}.yaml").write_text(render_manifests(spec))
        expected += build_objects(spec)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"{i}.yaml" for i in range(len(SPECS))],
    }
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    built = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout

    def key(o: dict[str, Any]) -> tuple[str, str, str]:
        return (o["metadata"]["namespace"], o["metadata"]["name"], o["kind"])

    def canonical(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sorted, with quantities as numbers: kustomize writes "1e9" as 1000000000."""
        objects = copy.deepcopy(sorted(objects, key=key))
        for o in objects:
            for c in o["spec"].get("template", {}).get("spec", {}).get("containers", []):
                for amounts in c["resources"].values():
                    amounts.update({k: parse_quantity(k, str(v)) for k, v in amounts.items()})
        return objects

    assert canonical(objects_of(built)) == canonical(expected)
    # the CLI on kustomize's own output: the stream as `kubectl apply` would receive it
    (tmp_path / "built.yaml").write_text(built)
    cli = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES]
    checked = subprocess.run(
        [*cli, str(tmp_path / "built.yaml")], capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(" passed for resource ") == len(expected)


def test_the_pod_is_probed_over_grpc_and_runs_locked_down() -> None:
    spec = SPECS["autoscaled-gpu"]
    pod = by_kind(build_objects(spec))["Deployment"]["spec"]["template"]["spec"]
    main = container(spec)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["grpc"]["port"] == 8001
    assert main["readinessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= spec.startup_timeout_seconds
    assert main["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SLEEP_SECONDS + REPLICA_DRAIN_SECONDS
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert main["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"},
    }
    assert main["command"] == ["python", "-m", "services.deployer.replica"]
    assert main["args"] == [
        "--model", "/models/deployments/7d1a/v2/model.onnx",
        "--model-name", "resnet-50",
        "--model-version", "v2",
        "--host", "0.0.0.0",
        "--port", "8001",
        "--max-batch-size", "32",
        "--max-batch-delay-us", "2000",
        "--threads", "4",
    ]  # fmt: skip
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] == "/etc/neural/authz/authz_public.pem"


def test_service_labels_and_selectors() -> None:
    spec = SPECS["autoscaled-gpu"]
    objects = by_kind(build_objects(spec))
    (port,) = objects["Service"]["spec"]["ports"]
    assert objects["Service"]["spec"]["type"] == "ClusterIP"
    assert port["name"] == "grpc" and port["appProtocol"] == "kubernetes.io/h2c"
    labels = objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "neural"
    assert labels["app.kubernetes.io/component"] == "model-server"
    assert labels["app.kubernetes.io/version"] == "v2"
    selector = objects["Service"]["spec"]["selector"]
    assert selector.items() <= labels.items() and "app.kubernetes.io/version" not in selector
    assert objects["Deployment"]["spec"]["selector"]["matchLabels"] == selector
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector


def test_replicas_autoscaler_and_disruption_budget() -> None:
    fixed = by_kind(build_objects(SPECS["fixed-three"]))
    assert "HorizontalPodAutoscaler" not in fixed
    assert fixed["Deployment"]["spec"]["replicas"] == 3
    assert fixed["PodDisruptionBudget"]["spec"]["minAvailable"] == 1

    single = by_kind(build_objects(SPECS["single"]))
    assert single["Deployment"]["spec"]["replicas"] == 1
    assert single["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in single["PodDisruptionBudget"]["spec"]

    scaled = by_kind(build_objects(SPECS["autoscaled-gpu"]))
    assert "replicas" not in scaled["Deployment"]["spec"]  # the HPA owns it
    hpa = scaled["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resnet-50",
    }
    (metric,) = hpa["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    one = by_kind(build_objects(SPECS["autoscaled-from-one"]))
    assert one["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": one["PodDisruptionBudget"]["spec"]["selector"],
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }


LOOKALIKES = [
    "lookalikes",
    "autoscaled-from-one",
    "fixed-three",
    "go-lookalikes",
    "more-lookalikes",
]


def test_yaml_lookalike_values_are_quoted() -> None:
    """PyYAML alone would leave 1e3, y and 0o17 plain: Go's YAML readers take them for
    numbers and booleans, and kubectl would refuse a label or arg that is not a string."""
    quoted = {
        "lookalikes": ["name: 'on'", "app.kubernetes.io/version: 'true'", "memory: '1e9'"],
        "autoscaled-from-one": ["name: 'yes'", "app.kubernetes.io/version: '1e3'"],
        "fixed-three": ["app.kubernetes.io/version: '1.0'", "- '1.0'"],
        "go-lookalikes": ["name: 'y'", "app.kubernetes.io/version: '0o17'", "cpu: '2e0'"],
        "more-lookalikes": ["name: 'n'", "app.kubernetes.io/version: '1_000'"],
    }
    for name, lines in quoted.items():
        text = render_manifests(SPECS[name])
        assert all(f" {line}\n" in text for line in lines), name
    assert "  name: digits\n" in render_manifests(SPECS["single"])  # plain where safe


def test_yaml_lookalike_values_stay_strings() -> None:
    for spec in (SPECS[name] for name in LOOKALIKES):
        (deployment,) = [o for o in objects_of(render_manifests(spec)) if o["kind"] == "Deployment"]
        assert deployment["metadata"]["name"] == spec.name
        assert deployment["metadata"]["labels"]["app.kubernetes.io/version"] == spec.version
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--model-version") + 1] == spec.version
        assert args[args.index("--model-name") + 1] == spec.name


BASE = {"name": "digits", "version": "v1", "model_path": "m/model.onnx"}
BAD = [
    ("name", ""),
    ("name", "Digits"),
    ("name", "1digits"),  # a Service name must begin with a letter
    ("name", "digits-"),
    ("name", "a" * 64),
    ("name", "dig_its"),
    ("name", 7),
    ("version", ""),
    ("version", "v1 "),
    ("version", "-v1"),
    ("version", "v" * 64),
    ("namespace", "Neural"),
    ("namespace", "a.b"),
    ("image", "neural/model-server:1.0 --privileged"),
    ("image", "Neural/Model"),
    ("image", ""),
    ("model_claim", "Claim"),
    ("model_path", ""),
    ("model_path", "/abs/model.onnx"),
    ("model_path", "../model.onnx"),
    ("model_path", "a/./model.onnx"),
    ("model_path", "a//model.onnx"),
    ("model_path", ".hidden/model.onnx"),
    ("model_path", "a b/model.onnx"),
    ("min_replicas", 0),
    ("min_replicas", True),
    ("min_replicas", 1.0),
    ("max_replicas", 1001),
    ("target_cpu_utilization", 0),
    ("gpus", -1),
    ("max_batch_size", 0),
    ("max_batch_delay_us", -1),
    ("threads", 0),
    ("startup_timeout_seconds", 1),
    ("termination_grace_seconds", PRE_STOP_SLEEP_SECONDS + REPLICA_DRAIN_SECONDS),
    ("cpu", ""),
    ("cpu", "0"),
    ("cpu", "-1"),
    ("cpu", "1 cpu"),
    ("cpu", "1Ki5"),
    ("cpu", "１"),  # a full-width digit: \d would take it, Kubernetes would not
    ("memory", "1GB"),
    ("memory", "1e99"),
    ("memory", 1),
    ("cpu_limit", "500m"),  # below the request of 1
    ("memory_limit", "512Mi"),  # below the request of 1Gi
    ("authz_public_key_secret", "Key"),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_input_raises_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ManifestSpec(**{**BASE, field: value})


def test_max_replicas_below_min_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^max_replicas: "):
        ManifestSpec(**BASE, min_replicas=3, max_replicas=2)


YAML_SPECIAL = [
    "a: b",
    "a\nb",
    "&anchor",
    "*alias",
    "!!python/object",
    "#comment",
    "-",
    "a b",
    "{}",
    "[x]",
    "a\n---\nkind: Secret",
    "'quoted'",
    "digits\n",
]


@pytest.mark.parametrize("name", YAML_SPECIAL)
def test_a_name_with_yaml_syntax_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"^name: "):
        ManifestSpec(**{**BASE, "name": name})


INJECTIONS = [
    "1Gi\nextra: true",
    "1Gi\n",
    "1Gi # comment",
    "1Gi\n---\napiVersion: v1\nkind: Secret",
    "{cpu: 1}",
    "1Gi\r\nprivileged: true",
]


@pytest.mark.parametrize("field", ["cpu", "memory", "cpu_limit", "memory_limit"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_a_quantity_cannot_inject_yaml(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ManifestSpec(**{**BASE, field: value})


@pytest.mark.parametrize("field", ["version", "image", "model_path", "namespace", "model_claim"])
@pytest.mark.parametrize("value", INJECTIONS)
def test_no_string_field_can_inject_yaml(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ManifestSpec(**{**BASE, field: value})


def test_the_spec_is_frozen() -> None:
    spec = SPECS["single"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]
