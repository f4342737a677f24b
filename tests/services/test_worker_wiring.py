"""How servers, actors and workers are wired: a server never imports its worker (nor the work
its actors run), declaring the actors loads no settings, every message a server sends names an
actor its worker declares, and the modules import each other without cycles."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.services.conftest import REDIS_URL

SERVICES = {
    "compiler": ["worker", "actors", "compile_job"],
    "trainer": ["worker", "actors", "runner", "search"],
}


def _python(code: str, tmp: Path) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) and return its stdout."""
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(ROOT),
        "NEURAL_DATA_DIR": str(tmp),
        "NEURAL_REDIS_URL": REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.integration  # the server is built on SQLite
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_the_server_imports_neither_its_worker_nor_its_work(service: str, tmp_path: Path) -> None:
    # the server as it starts: its modules imported, then built (database on SQLite)
    out = _python(
        "import asyncio, json, sys\n"
        "from service_kit.settings import load\n"
        f"import services.{service}.__main__\n"
        f"from services.{service}.app import build\n"
        "async def main():\n"
        f"    app = await build(load('{service}'))\n"
        "    await app.close()\n"
        "asyncio.run(main())\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith('services.{service}.'))))",
        tmp_path,
    )
    loaded = set(json.loads(out))
    assert f"services.{service}.app" in loaded
    assert not {f"services.{service}.{m}" for m in SERVICES[service]} & loaded


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_declaring_the_actors_loads_no_settings_and_matches_what_the_server_sends(
    service: str, tmp_path: Path
) -> None:
    out = _python(
        "import json, logging, dramatiq\n"
        "from dramatiq.brokers.stub import StubBroker\n"
        "import service_kit.settings\n"
        "def refuse(*a, **k):\n"
        "    raise AssertionError('settings loaded while declaring actors')\n"
        "service_kit.settings.load = refuse\n"
        "broker = StubBroker()\n"
        "dramatiq.set_broker(broker)\n"
        "handlers = list(logging.getLogger().handlers)\n"
        f"import services.{service}.actors\n"
        f"from services.{service} import tasks\n"
        "from service_kit.tasks import Task\n"
        "assert logging.getLogger().handlers == handlers, 'logging set up on import'\n"
        "sent = [t for t in vars(tasks).values() if isinstance(t, Task)]\n"
        "print(json.dumps({'declared': {n: broker.get_actor(n).queue_name\n"
        "    for n in broker.get_declared_actors()},\n"
        "    'sent': {t.actor_name: t.queue_name for t in sent}}))",
        tmp_path,
    )
    found = json.loads(out)
    assert found["sent"], "the service's tasks name no actor"
    for actor, queue in found["sent"].items():
        assert found["declared"].get(actor) == queue, (actor, found["declared"])


def _modules(root: Path, package: str) -> dict[str, Path]:
    """The modules of `package` by name, its subpackages' too (a subpackage by its __init__);
    folders that are no package (migrations) and the package's own __init__ are left out."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        folders = [root.joinpath(*parts[:i]) for i in range(1, len(parts))]
        if parts == ("__init__",) or not all((f / "__init__.py").exists() for f in folders):
            continue
        name = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join((package, *name))] = path
    return found


def _imports(path: Path, package: str, module: str) -> set[str]:
    """Every module of `package` that `module` imports, at any depth (lazy imports too)."""
    # a relative import counts from the module's package: an __init__ is its own package
    here = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.rsplit(".", node.level - 1)[0]
                target = f"{base}.{node.module}" if node.module else base
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith(package + ".")}
    # importing pkg.sub.mod first runs pkg.sub's __init__, unless that is already running
    # because `module` is in it
    parents = {".".join(n.split(".")[:i]) for n in found for i in range(2, n.count(".") + 1)}
    mine = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 2)}
    return found | (parents - mine)


def _cycles(root: Path, package: str) -> list[list[str]]:
    modules = _modules(root, package)
    graph = {m: _imports(p, package, m) & set(modules) for m, p in modules.items()}

    def reaches(start: str, goal: str) -> list[str] | None:
        stack, seen = [[start]], set()
        while stack:
            path = stack.pop()
            for nxt in sorted(graph[path[-1]]):
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append([*path, nxt])
        return None

    return [c for m in modules if (c := reaches(m, m))]


@pytest.mark.parametrize(
    ("root", "package"),
    [
        ("libs/service_kit/service_kit", "service_kit"),
        ("services/compiler", "services.compiler"),
        ("services/trainer", "services.trainer"),
    ],
)
def test_no_import_cycles(root: str, package: str) -> None:
    cycles = _cycles(ROOT / root, package)
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_sees_into_subpackages(tmp_path: Path) -> None:
    # pkg.a imports pkg.sub.b, which first runs pkg.sub's __init__, whose pkg.sub.c imports
    # pkg.a: a cycle the webhooks package could hide from a check of top-level modules only
    files = {
        "__init__.py": "",
        "a.py": "from .sub.b import thing\nother = thing\n",
        "sub/__init__.py": "from .c import z\n",
        "sub/b.py": "thing = 1\n",
        "sub/c.py": "from ..a import other\nz = other\n",
        "migrations/env.py": "from pkg.a import thing\n",  # no package: not a module of pkg
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert sorted(_modules(tmp_path, "pkg")) == ["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.sub.c"]
    assert _imports(tmp_path / "sub/__init__.py", "pkg", "pkg.sub") == {"pkg.sub.c", "pkg.sub.c.z"}
    assert _cycles(tmp_path, "pkg")[0] == ["pkg.a", "pkg.sub", "pkg.sub.c", "pkg.a"]
