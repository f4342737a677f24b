"""/openapi.json and Swagger UI at /docs, served by the real Envoy from the rendered gateway
config, and /docs opened in headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from gateway import docs
from tests.waiting import until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ENVOY = Path(sys.executable).parent / "envoy"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]
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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The gateway rendered for `local` (only its documentation routes are exercised, so no
    service runs: the upstream addresses are closed ports), on ports of its own."""
    _generated_files_present()
    work = tmp_path_factory.mktemp("envoy")
    port, admin = _free_port(), _free_port()
    env = {**os.environ, "NEURAL_GATEWAY_PORT": str(port), "NEURAL_GATEWAY_ADMIN_PORT": str(admin)}
    for name in UPSTREAMS:
        env[f"NEURAL_{name.upper()}_ADDRESS"] = f"127.0.0.1:{_free_port()}"
    config = work / "envoy.yaml"
    subprocess.run(
        [sys.executable, "-m", "gateway.render", "--target", "local", "-o", str(config)],
        check=True,
        cwd=ROOT,
        env=env,
    )
    log = (work / "envoy.log").open("w")
    # Envoy runs in the repository root: the config names the docs' files relative to it.
    process = subprocess.Popen(
        [str(ENVOY), "-c", str(config), "--base-id", str(port), "-l", "warning"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (work / "envoy.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        until(ready, timeout=30, what="envoy ready")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


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
