"""/openapi.json and Swagger UI at /docs, and the web console's files at /, served by the real
Envoy from the rendered gateway config, and /docs opened in headless Chromium (Debian's, driven
by Playwright). The console itself is exercised in tests/web/test_console_e2e.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from gateway import console, docs, static_routes
from gateway.render import ensure_dynamic_dir, render
from scripts.browser import CHROMIUM, CHROMIUM_ARGS
from tests.waiting import until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"
UPSTREAMS = ("compiler", "trainer", "tracker", "deployer", "authz", "ratelimit")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generated_files_present() -> None:
    missing = [
        str(path)
        for path in (ROOT / "gateway" / "openapi.json", ROOT / "gateway" / "docs" / docs.INDEX)
        if not path.is_file()
    ]
    if missing:
        pytest.fail(f"run `make setup` first: {', '.join(missing)} missing")


def _gateway_env(work: Path) -> tuple[dict[str, str], int, int]:
    """Settings for a gateway on ports of its own; no service runs (the upstream addresses are
    closed ports): only the routes Envoy answers itself are exercised."""
    port, admin = _free_port(), _free_port()
    env = {
        **os.environ,
        "NEURAL_GATEWAY_PORT": str(port),
        "NEURAL_GATEWAY_ADMIN_PORT": str(admin),
        "NEURAL_ENVOY_DYNAMIC_DIR": str(work / "dynamic"),
    }
    for name in UPSTREAMS:
        env[f"NEURAL_{name.upper()}_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    return env, port, admin


@contextmanager
def _envoy(work: Path, config: Path, port: int, admin: int) -> Iterator[str]:
    log = (work / "envoy.log").open("w")
    # Envoy runs in the repository root: the config names the files relative to it.
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--base-id", str(port), "-l", "warning"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert process.poll() is None, (work / "envoy.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(ready, timeout=30, what="envoy ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway rendered for `local` by `python -m gateway.render`, as `make run` does."""
    _generated_files_present()
    work = tmp_path_factory.mktemp("envoy")
    env, port, admin = _gateway_env(work)
    config = work / "envoy.yaml"
    subprocess.run(
        [sys.executable, "-m", "gateway.render", "--target", "local", "-o", str(config)],
        check=True,
        cwd=ROOT,
        env=env,
    )
    with _envoy(work, config, port, admin) as base:
        yield base


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for item in document["paths"].values() for op in item.values()]


def test_openapi_json_is_served_without_credentials(gateway: str) -> None:
    response = httpx.get(f"{gateway}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    served = response.json()
    assert served == json.loads((ROOT / "gateway" / "openapi.json").read_text())
    assert len(_operations(served)) > 40


def test_docs_page_and_assets_are_served(gateway: str) -> None:
    page = httpx.get(f"{gateway}/docs", timeout=10)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'url: "/openapi.json"' in page.text
    for name, content_type in docs.ASSETS.items():
        asset = httpx.get(f"{gateway}/docs/{name}", timeout=10)
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == content_type
        assert asset.content == (ROOT / "gateway" / "docs" / name).read_bytes()


def test_api_routes_still_need_credentials(gateway: str) -> None:
    # The docs' routes skip ext_authz; the API's do not (and authz is down here: fail closed).
    response = httpx.get(f"{gateway}/v1/models", timeout=10)
    assert response.status_code in (401, 403, 503)


def test_docs_open_in_headless_chromium_and_list_the_operations(gateway: str) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: make setup installs it")
    document = httpx.get(f"{gateway}/openapi.json", timeout=10).json()
    operations = _operations(document)
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{gateway}/docs")
            page.wait_for_function(
                "n => document.querySelectorAll('.opblock').length >= n",
                arg=len(operations),
                timeout=30_000,
            )
            shown = page.eval_on_selector_all(
                ".opblock-summary-path", "nodes => nodes.map(n => n.getAttribute('data-path'))"
            )
            title = page.inner_text(".info .title")
        finally:
            browser.close()
    assert not errors
    assert "Neural platform API" in title
    assert sorted(shown) == sorted(path for path, item in document["paths"].items() for _ in item)
    # Offline: every request the page made went to the gateway itself.
    assert requested and all(url.startswith(gateway + "/") for url in requested), requested


def test_console_build_is_served_at_the_root(gateway: str) -> None:
    dist = ROOT / console.DIST_DIR
    if not (dist / console.INDEX).is_file():
        pytest.fail("the web console is not built: run `make setup` (it builds web/dist)")
    for path in ("/", "/index.html"):
        page = httpx.get(f"{gateway}{path}", timeout=10)
        assert page.status_code == 200, path
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["cache-control"] == "no-cache"
        assert page.content == (dist / console.INDEX).read_bytes()
    assets = [p for p in (dist / console.ASSETS).rglob("*") if p.is_file()]
    assert any(p.suffix == ".js" for p in assets), assets
    for path in assets:
        url = f"{gateway}/{path.relative_to(dist).as_posix()}"
        asset = httpx.get(url, timeout=10)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"] == static_routes.content_type(path)
        assert asset.headers["cache-control"] == console.cache_control(path.name)
        assert asset.content == path.read_bytes()
    # every asset the page names is one the gateway serves
    page = httpx.get(f"{gateway}/", timeout=10).text
    named = [p for p in assets if f"/{p.relative_to(dist).as_posix()}" in page]
    assert named, f"index.html names none of {assets}"


def test_without_a_build_the_root_says_how_to_build_it(tmp_path: Path) -> None:
    env, port, admin = _gateway_env(tmp_path)
    ensure_dynamic_dir(tmp_path / "dynamic")
    config = tmp_path / "envoy.yaml"
    config.write_text(render("local", env, console_dir=tmp_path / "no-build"))
    with _envoy(tmp_path, config, port, admin) as base:
        page = httpx.get(f"{base}/", timeout=10)
        with_query = httpx.get(f"{base}/index.html?from=bookmark", timeout=10)
        docs_page = httpx.get(f"{base}/docs", timeout=10)
    assert page.status_code == 503
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "make setup" in page.text and "<h1>" in page.text
    assert (with_query.status_code, with_query.text) == (503, page.text)
    assert with_query.headers["content-type"] == "text/html; charset=utf-8"
    assert docs_page.status_code == 200  # the rest of the gateway is as usual
