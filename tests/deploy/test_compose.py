"""docker-compose.yml, checked without a Docker engine (none runs here): valid under the Compose
specification's schema (the copy check-jsonschema vendors), and in agreement with the code and
with `make run`: the same processes as scripts/run_stack.py, entry points that exist, the
settings' ports and names, one image built from the root Dockerfile, the order of start (data
stores, migrations, keys), key files where the settings point (from the keys service's own
script, run here on SQLite), Envoy rendered for compose service names, no secret written in."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from service_kit.settings import DEFAULT_PORTS

from gateway import render
from gateway.authz import keys as authz_keys
from tests.conftest import ROOT
from tests.test_settings_documented import PATTERN, settings_in_code

COMPOSE = ROOT / "docker-compose.yml"
VENV_BIN = Path(sys.executable).parent
IMAGE = "neural/platform:0.1.0"
DATA_STORES = {"postgres": "postgres:16", "redis": "redis:7"}
ONE_SHOTS = {"migrate", "keys", "gateway-init"}
# The processes that use the shared storage (the k8s base mounts it in the same ones).
STORAGE_USERS = {
    "compiler",
    "compiler-worker",
    "trainer",
    "trainer-worker",
    "tracker",
    "deployer",
    "deployer-controller",
}
HEALTHCHECK = ["python", "-m", "service_kit.healthcheck"]
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def load(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())  # PyYAML resolves the `<<` merge keys, as compose


def services() -> dict[str, dict[str, Any]]:
    return load()["services"]


def platform() -> dict[str, dict[str, Any]]:
    """The services that run the platform's image."""
    return {n: s for n, s in services().items() if s.get("image") == IMAGE}


@functools.cache
def run_stack() -> ModuleType:
    """scripts/run_stack.py, whose tables say what `make run` starts."""
    spec = importlib.util.spec_from_file_location("run_stack", ROOT / "scripts" / "run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_stack", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's volumes in the long syntax."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            source, target, *mode = entry.split(":")
            entry = {"type": "volume", "source": source, "target": target}
            entry["read_only"] = mode == ["ro"]
        found.append(entry)
    return found


def script(service: dict[str, Any]) -> str:
    """The shell script of a `sh -ec SCRIPT` command."""
    command = service["command"]
    assert command[:2] == ["sh", "-ec"], command
    return command[2]


def check_file(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_file_is_valid_under_the_compose_specification() -> None:
    done = check_file(COMPOSE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "version" not in load()  # obsolete in the Compose specification


def test_the_schema_check_rejects_an_unknown_key(tmp_path: Path) -> None:
    """The check above is only worth something if the schema refuses a stray key."""
    text = COMPOSE.read_text().replace(
        "    command: [python, -m, services.tracker]\n",
        "    command: [python, -m, services.tracker]\n    restart_policy: always\n",
    )
    assert "restart_policy" in text
    (tmp_path / "docker-compose.yml").write_text(text)
    done = check_file(tmp_path / "docker-compose.yml")
    assert done.returncode == 1 and "restart_policy" in done.stdout, done.stdout


def test_the_same_processes_as_make_run() -> None:
    stack = run_stack()
    wanted: dict[str, list[str]] = {}
    for name, module, _port in stack.GATEWAY_SERVICES:
        wanted[name] = ["python", "-m", module]
    for name, module, worker, threads, _port in stack.SERVICES:
        wanted[name] = ["python", "-m", module]
        if worker:
            args = ["--processes", "1", "--threads", str(threads)]
            wanted[f"{name}-worker"] = ["python", "-m", "dramatiq", worker, *args]
    for name, module in stack.CONTROLLERS:
        wanted[name] = ["python", "-m", module]
    running = {n: s for n, s in platform().items() if n not in ONE_SHOTS and n != "gateway"}
    assert {n: s["command"] for n, s in running.items()} == wanted
    # and last, as there, Envoy on the rendered configuration
    assert "exec envoy -c " in script(services()["gateway"])
    assert set(services()) == {*wanted, *ONE_SHOTS, "gateway", *DATA_STORES}


def test_every_module_it_runs_exists() -> None:
    modules = set()
    for service in platform().values():
        commands = [service["command"]]
        if "healthcheck" in service:
            commands.append(service["healthcheck"]["test"][1:])  # after CMD
        for command in commands:
            if command[:2] == ["sh", "-ec"]:
                modules.update(re.findall(r"python -m ([\w.]+)", command[2]))
            elif command[:2] == ["python", "-m"]:
                modules.add(command[2])
                if command[2] == "dramatiq":
                    modules.add(command[3])  # the worker module the CLI loads
            else:
                assert command[:2] == ["python", "-c"], command
                code = command[2]
                compile(code, "<compose>", "exec")
                for module, name in re.findall(r"from ([\w.]+) import (\w+)", code):
                    assert hasattr(importlib.import_module(module), name), (module, name)
    assert {"services.migrate", "services.deployer.controller", "gateway.render"} <= modules
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, missing


def test_ports_and_addresses_agree_with_the_settings() -> None:
    found = platform()
    for name, port in DEFAULT_PORTS.items():
        test = found[name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", *HEALTHCHECK], test
        assert test[4] == f"127.0.0.1:{port}", name
    # every server is health-checked by the gRPC check; no other process claims a gRPC port
    grpc_checked = {
        n for n, s in found.items() if s.get("healthcheck", {}).get("test", [])[1:4] == HEALTHCHECK
    }
    assert grpc_checked == set(DEFAULT_PORTS)
    for name, service in found.items():
        env = service.get("environment", {})
        for other, port in DEFAULT_PORTS.items():
            if f"NEURAL_{other.upper()}_ADDRESS" in env:
                assert env[f"NEURAL_{other.upper()}_ADDRESS"] == f"{other}:{port}", name
    stack = run_stack()
    worker = found["trainer-worker"]
    assert worker["environment"]["dramatiq_prom_port"] == str(stack.WORKER_METRICS_PORT)
    assert f"127.0.0.1:{stack.WORKER_METRICS_PORT}/metrics" in worker["healthcheck"]["test"][3]
    gateway = found["gateway"]
    assert gateway["ports"] == [f"127.0.0.1:{render.GATEWAY_PORT}:{render.GATEWAY_PORT}"]
    assert f"ready({render.ADMIN_PORT})" in gateway["healthcheck"]["test"][3]
    published = [n for n, s in services().items() if "ports" in s]
    assert published == ["gateway"]  # the only way in


def test_one_image_from_the_root_dockerfile_and_locked_down_containers() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"docker build -t {IMAGE} ." in dockerfile
    kustomization = yaml.safe_load((ROOT / "deploy/k8s/base/kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert f"{image['name']}:{image['newTag']}" == IMAGE
    runtime = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+)$", runtime, re.M).group(1)  # type: ignore[union-attr]
    workdir = re.search(r"^WORKDIR (\S+)$", runtime, re.M).group(1)  # type: ignore[union-attr]
    built = [n for n, s in services().items() if "build" in s]
    assert built == ["migrate"] and services()["migrate"]["build"] == "."
    for name, service in services().items():
        if name in DATA_STORES:
            assert service["image"] == DATA_STORES[name]
            continue
        assert service["image"] == IMAGE, name
        assert service["user"] == f"{user}:{user}", name
        assert service["working_dir"] == workdir, name
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name  # HOME: the one writable place besides volumes
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        restart = service["restart"]
        assert restart == ("no" if name in ONE_SHOTS else "unless-stopped"), name


def test_writable_volumes_are_mounted_on_directories_the_image_gives_its_user() -> None:
    """A new named volume takes the owner of the image directory it is mounted on; elsewhere
    it belongs to root, and uid 10001 could not write it."""
    runtime = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1]
    owned = re.search(r"chown neural:neural ([^\n]+)", runtime).group(1).split()  # type: ignore[union-attr]
    assert "/data" in owned
    declared = set(load()["volumes"])
    for name, service in platform().items():
        for mount in mounts(service):
            assert mount["type"] == "volume" and mount["source"] in declared, (name, mount)
            if not mount.get("read_only"):
                assert mount["target"] in owned, (name, mount)
                assert "subpath" not in mount.get("volume", {}), (name, mount)


def test_start_order_data_stores_then_migrations_then_keys() -> None:
    found = services()
    assert found["migrate"]["command"] == ["python", "-m", "services.migrate"]
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    keys = found["keys"]["depends_on"]
    assert keys["migrate"] == {"condition": "service_completed_successfully"}
    for name, service in platform().items():
        env = service.get("environment", {})
        after = service.get("depends_on", {})
        if name == "migrate":
            continue
        if "NEURAL_DATABASE_URL" in env:
            assert after["postgres"] == {"condition": "service_healthy"}, name
            assert after["migrate"] == {"condition": "service_completed_successfully"}, name
            assert env["NEURAL_MIGRATE_AT_START"] == "0", name  # the services wait for it
        if "NEURAL_REDIS_URL" in env and name != "keys":
            assert after["redis"] == {"condition": "service_healthy"}, name
        if name != "keys" and any(m["source"] == "keys" for m in mounts(service)):
            assert after["keys"] == {"condition": "service_completed_successfully"}, name
        if any(m["source"] == "envoy-dynamic" for m in mounts(service)) and name != "gateway-init":
            assert after["gateway-init"] == {"condition": "service_completed_successfully"}, name
    for store in DATA_STORES:
        assert found[store]["healthcheck"]["test"], store
    gateway = found["gateway"]["depends_on"]
    for name in DEFAULT_PORTS:  # Envoy last: its upstreams are up
        assert gateway[name] == {"condition": "service_healthy"}, name


def test_every_variable_set_is_one_the_code_reads() -> None:
    read = settings_in_code(ROOT)
    dramatiq_spec = importlib.util.find_spec("dramatiq")
    assert dramatiq_spec is not None and dramatiq_spec.origin is not None
    dramatiq_text = "".join(p.read_text() for p in Path(dramatiq_spec.origin).parent.rglob("*.py"))
    seen = set()
    for name, service in platform().items():
        for variable in service.get("environment", {}):
            seen.add(variable)
            if PATTERN.fullmatch(variable):  # read by name pattern (settings.service_address)
                continue
            if variable.startswith("NEURAL_"):
                assert variable in read, (name, variable)
            else:
                assert variable.startswith("dramatiq_"), (name, variable)
                assert f'"{variable}"' in dramatiq_text, (name, variable)
    assert {"NEURAL_DATABASE_URL", "NEURAL_REPLICA_HOST", "NEURAL_GATEWAY_URL"} <= seen


def test_the_database_is_the_postgres_service() -> None:
    found = services()
    postgres = found["postgres"]["environment"]
    for name, service in platform().items():
        url = service.get("environment", {}).get("NEURAL_DATABASE_URL")
        if url is None:
            continue
        m = re.fullmatch(r"postgresql\+asyncpg://(\w+):(\$\{[^}]+\})@(\w+):5432/(\w+)", url)
        assert m, (name, url)
        user, password, host, database = m.groups()
        assert (user, host, database) == (postgres["POSTGRES_USER"], "postgres", "neural")
        assert database == postgres["POSTGRES_DB"]
        assert INTERPOLATION.fullmatch(password).group(1) == "POSTGRES_PASSWORD"  # type: ignore[union-attr]
        redis = service["environment"]["NEURAL_REDIS_URL"]
        assert redis == "redis://redis:6379/0"


def test_no_secret_is_written_in() -> None:
    text = COMPOSE.read_text()
    assert "BEGIN" not in text and "REPLACE_ME" not in text
    # every interpolation is required (`:?`): no default value to fall back on
    used = {}
    for variable, rest in INTERPOLATION.findall(text):
        assert rest.startswith(":?"), (variable, rest)
        used[variable] = rest
    assert set(used) == {"POSTGRES_PASSWORD", "NEURAL_PAGE_TOKEN_SECRET"}
    for name, service in services().items():
        for variable, value in service.get("environment", {}).items():
            if re.search(r"SECRET|PASSWORD|TOKEN", variable) and not variable.endswith("_FILE"):
                assert INTERPOLATION.fullmatch(str(value)), (name, variable)


@pytest.mark.integration
def test_the_keys_script_makes_the_files_the_services_mount(tmp_path: Path) -> None:
    """The keys service's script, run here against SQLite with its volume at tmp_path/keys:
    each key file the settings name is in the volume's subpath mounted there, and the signing
    key is mounted in authz alone."""
    found = platform()
    volume = tmp_path / "keys"
    (keys_mount,) = mounts(found["keys"])
    assert keys_mount["source"] == "keys"
    text = script(found["keys"]).replace(keys_mount["target"] + "/", f"{volume}/")
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'neural.db'}",
    }

    def run_keys() -> None:
        done = subprocess.run(
            ["sh", "-ec", text], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr

    run_keys()
    private = (volume / "authz" / authz_keys.PRIVATE).read_bytes()
    worker_key = (volume / "worker" / "worker.key").read_text()
    run_keys()  # a second `up`: the pair is kept, the worker's key reissued
    assert (volume / "authz" / authz_keys.PRIVATE).read_bytes() == private
    assert (volume / "worker" / "worker.key").read_text() != worker_key
    public = (volume / "authz" / authz_keys.PUBLIC).read_bytes()
    assert (volume / "public" / authz_keys.PUBLIC).read_bytes() == public
    listed = subprocess.run(
        [sys.executable, "-m", "gateway.authz.keys", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    active = [line for line in listed.stdout.splitlines() if line.endswith("active")]
    assert len(active) == 1 and "platform-workers" in active[0], listed.stdout

    for name, service in found.items():
        if name == "keys":
            continue
        files = set()
        for mount in mounts(service):
            if mount["source"] != "keys":
                continue
            assert mount["read_only"] is True, name
            subpath = mount["volume"]["subpath"]  # never the whole volume
            for path in (volume / subpath).iterdir():
                files.add(str(PurePosixPath(mount["target"]) / path.name))
        env_of = service.get("environment", {})
        if name in ("migrate", "gateway-init", "gateway"):
            assert not files, name  # no tokens to check
            continue
        assert env_of["NEURAL_AUTHZ_PUBLIC_KEY_FILE"] in files, name
        private_file = env_of.get("NEURAL_AUTHZ_PRIVATE_KEY_FILE")
        assert (private_file is not None) == (name == "authz"), name
        assert (name == "authz") == any(f.endswith(authz_keys.PRIVATE) for f in files), name
        if private_file:
            assert private_file in files
        service_key = env_of.get("NEURAL_SERVICE_KEY_FILE")
        assert (service_key is not None) == (name == "trainer-worker"), name
        if service_key:
            assert service_key in files


def test_storage_is_the_shared_volume() -> None:
    for name, service in platform().items():
        storage = [m["target"] for m in mounts(service) if m["source"] == "storage"]
        if name not in STORAGE_USERS:
            assert not storage, name
            continue
        directory = PurePosixPath(service["environment"]["NEURAL_STORAGE_DIR"])
        (target,) = storage
        assert directory.is_relative_to(target), name


def test_the_gateway_renders_for_the_compose_service_names(tmp_path: Path) -> None:
    """The gateway's own command line renders a configuration whose upstreams are services of
    this file at their ports, whose cluster file is the shared volume the controller writes."""
    found = platform()
    text = script(found["gateway"])
    render_line = text.split("&&")[0].strip()
    args = shlex.split(render_line)
    assert args[:4] == ["python", "-m", "gateway.render", "--target"] and args[4] == "compose"
    output = args[args.index("-o") + 1]
    assert f"envoy -c {output}" in text
    assert PurePosixPath(output).is_relative_to("/tmp")  # a tmpfs: the root is read-only
    rendered = tmp_path / "envoy.yaml"
    args[args.index("-o") + 1] = str(rendered)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEURAL_")}
    env.update(found["gateway"].get("environment", {}))
    # the image's own setting: Dockerfile ENV NEURAL_ENVOY_DYNAMIC_DIR
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_dynamic = re.search(r"NEURAL_ENVOY_DYNAMIC_DIR=(\S+)", dockerfile).group(1)  # type: ignore[union-attr]
    env.setdefault("NEURAL_ENVOY_DYNAMIC_DIR", image_dynamic)
    done = subprocess.run(
        [sys.executable, *args[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(rendered.read_text())
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                host, port = address["address"], address["port_value"]
                assert host in found, (cluster["name"], host)
                assert port == DEFAULT_PORTS[host], (cluster["name"], port)
                health = found[host]["healthcheck"]["test"]
                assert health[-1] == f"127.0.0.1:{port}"
    cds = config["dynamic_resources"]["cds_config"]["path_config_source"]["path"]
    dynamic = str(PurePosixPath(cds).parent)
    assert dynamic == image_dynamic == render.CONTAINER_DYNAMIC_DIR
    for name in ("gateway", "gateway-init", "deployer-controller"):
        targets = {m["target"] for m in mounts(found[name]) if m["source"] == "envoy-dynamic"}
        assert targets == {dynamic}, name
    controller = found["deployer-controller"]["environment"]
    assert controller["NEURAL_ENVOY_DYNAMIC_DIR"] == dynamic
    assert controller["NEURAL_REPLICA_HOST"] in {
        "deployer-controller",
        found["deployer-controller"].get("hostname"),
    }
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["port_value"] == render.GATEWAY_PORT
    assert config["admin"]["address"]["socket_address"]["port_value"] == render.ADMIN_PORT


def test_gateway_init_makes_the_empty_cluster_file(tmp_path: Path) -> None:
    init = platform()["gateway-init"]
    command = init["command"]
    assert command[:2] == ["python", "-c"]
    (mount,) = mounts(init)
    assert mount["target"] in command[2]  # it writes into its volume
    code = command[2].replace(mount["target"], str(tmp_path / "dynamic"))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dynamic" / "cds.yaml").read_text() == render.EMPTY_CLUSTERS


def test_the_healthcheck_command_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service_kit.healthcheck", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "HOST:PORT" in done.stdout, done.stderr
