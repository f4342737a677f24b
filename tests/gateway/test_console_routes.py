"""The web console's routes (gateway/console.py): every file of a build at its own path with the
right type and cache header, the not-built page when there is no build, public like /docs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import console, static_routes
from gateway.render import RenderError, render

pytestmark = pytest.mark.unit

EXT_AUTHZ = "envoy.filters.http.ext_authz"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


def _build(dist: Path) -> Path:
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!DOCTYPE html><title>console</title>")
    (dist / "assets" / "index-Bx3_k9Qz.js").write_text("export {};")
    (dist / "assets" / "index-D4f-ZZ10.css").write_text("body{}")
    (dist / "favicon.svg").write_text("<svg/>")
    (dist / ".stamp").write_text("")  # hidden: never served
    return dist


def _by_path(routes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["match"]["path"]: r for r in routes}


def _header(route: dict[str, Any], key: str) -> str:
    (value,) = [
        h["header"]["value"] for h in route["response_headers_to_add"] if h["header"]["key"] == key
    ]
    return value


def test_each_file_of_a_build_has_its_route_type_and_cache(tmp_path: Path) -> None:
    dist = _build(tmp_path / "dist")
    routes = _by_path(console.routes(dist))
    assert set(routes) == {
        "/",
        "/index.html",
        "/favicon.svg",
        "/assets/index-Bx3_k9Qz.js",
        "/assets/index-D4f-ZZ10.css",
    }
    for path in ("/", "/index.html"):
        assert routes[path]["direct_response"] == {
            "status": 200,
            "body": {"filename": str(dist / "index.html")},
        }
        assert _header(routes[path], "content-type") == "text/html; charset=utf-8"
        assert _header(routes[path], "cache-control") == "no-cache"
    script = routes["/assets/index-Bx3_k9Qz.js"]
    assert script["direct_response"]["body"]["filename"] == str(dist / "assets/index-Bx3_k9Qz.js")
    assert _header(script, "content-type") == "text/javascript; charset=utf-8"
    assert _header(script, "cache-control") == static_routes.IMMUTABLE
    assert _header(routes["/assets/index-D4f-ZZ10.css"], "content-type").startswith("text/css")
    # not hashed: a later build may change it under the same name
    assert _header(routes["/favicon.svg"], "cache-control") == "no-cache"
    assert _header(routes["/favicon.svg"], "content-type") == "image/svg+xml"
    for route in routes.values():
        skipped = route["typed_per_filter_config"]
        assert skipped[EXT_AUTHZ]["disabled"] is True and skipped[TRANSCODER]["disabled"] is True


def test_a_relative_build_folder_is_named_relative_for_envoy(tmp_path: Path) -> None:
    # Envoy runs in the repository root: the paths it is given stay relative to it.
    _build(tmp_path / "web" / "dist")
    routes = console.routes(Path("web/dist"), root=tmp_path)
    assert len(routes) == 5
    for route in routes:
        assert route["direct_response"]["body"]["filename"].startswith("web/dist/")


def test_without_a_build_the_root_says_how_to_build_it(tmp_path: Path) -> None:
    routes = _by_path(console.routes(tmp_path / "missing"))
    assert set(routes) == {"/", "/index.html"}
    for route in routes.values():
        assert route["direct_response"]["status"] == 503
        assert "make setup" in route["direct_response"]["body"]["inline_string"]
        assert _header(route, "content-type").startswith("text/html")
        assert route["typed_per_filter_config"][EXT_AUTHZ]["disabled"] is True


def test_a_file_over_envoys_cap_is_refused_naming_it(tmp_path: Path) -> None:
    dist = _build(tmp_path / "dist")
    big = dist / "assets" / "huge-AAAAAAAA.js"
    big.write_bytes(b"x" * (static_routes.MAX_DIRECT_RESPONSE_BODY_BYTES + 1))
    with pytest.raises(ValueError, match=r"huge-AAAAAAAA\.js"):
        console.routes(dist)
    with pytest.raises(RenderError, match=r"huge-AAAAAAAA\.js"):
        render("local", {}, console_dir=dist)


def test_rendered_configuration_puts_the_console_before_the_catch_all(tmp_path: Path) -> None:
    dist = _build(tmp_path / "dist")
    cfg = yaml.safe_load(render("local", {}, console_dir=dist))
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    paths = [r["match"].get("path") or r["match"].get("prefix") for r in routes]
    assert paths.index("/") < paths.index("/v1/") and routes[paths.index("/")]["match"] == {
        "path": "/"
    }
    assert "/assets/index-Bx3_k9Qz.js" in paths and "/docs" in paths
    # the catch-all stays last and is still a prefix route
    assert routes[-1]["match"] == {"prefix": "/"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("app.js.map", "application/json"),
        ("font.woff2", "font/woff2"),
        ("icon.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
    ],
)
def test_content_types_by_extension(name: str, expected: str) -> None:
    assert static_routes.content_type(Path(name)) == expected


@pytest.mark.parametrize(
    ("name", "hashed"),
    [
        ("index-Bx3_k9Qz.js", True),
        ("uPlot.min-CzW2x-1a.css", True),
        ("logo.svg", False),
        ("index-short.js", False),
    ],
)
def test_only_hashed_names_are_cached_long(name: str, hashed: bool) -> None:
    expected = static_routes.IMMUTABLE if hashed else static_routes.NO_CACHE
    assert console.cache_control(name) == expected
