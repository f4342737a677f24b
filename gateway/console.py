"""The web console (web/, built by `make setup` into web/dist) at `/`, served by Envoy itself.

The app uses hash routes (`#/runs/<id>`), so the gateway only serves files: `/` and
`/index.html` answer web/dist/index.html (no-cache: it names the current build's assets), and
each file under web/dist/assets/ answers at `/assets/<name>`, cached for a year when its name
carries Vite's content hash. Any other file at web/dist's top (Vite copies web/public/ there)
answers at `/<name>`, no-cache.

When web/dist/index.html is missing where the configuration is rendered (a gateway test run
before the build, an image built without the console), `/` and `/index.html` answer 503 with a
page saying `make setup` builds it, rather than having no route: without one, `/` would fall to
the catch-all, whose ext_authz asks a browser for credentials, which explains nothing. Routes
are listed when the configuration is rendered (at each `make run`), where Envoy runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway import static_routes

ROOT = Path(__file__).resolve().parent.parent
# Relative to the repository root, where Envoy runs.
DIST_DIR = Path("web/dist")
INDEX = "index.html"
ASSETS = "assets"
# Vite's default asset name: `[name]-[hash].[ext]`, the hash 8 URL-safe base64 characters.
_HASHED = re.compile(r".+-[A-Za-z0-9_-]{8}\.[A-Za-z0-9]+")
NOT_BUILT_STATUS = 503
NOT_BUILT_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head><meta charset="UTF-8"><title>Neural console not built</title></head>
  <body>
    <h1>The web console is not built</h1>
    <p>Run <code>make setup</code> (it builds web/ into web/dist), then restart the gateway
    (<code>make run</code>). The API itself is served as usual; its documentation is at
    <a href="/docs">/docs</a>.</p>
  </body>
</html>
"""


def cache_control(name: str) -> str:
    """Long-lived for a hashed asset's name, revalidated otherwise."""
    return static_routes.IMMUTABLE if _HASHED.fullmatch(name) else static_routes.NO_CACHE


def routes(dist_dir: Path = DIST_DIR, root: Path = ROOT) -> list[dict[str, Any]]:
    """Envoy routes (v3 Route dicts) for the console's files in `dist_dir` (relative to `root`,
    the repository's, where Envoy runs, or absolute), or the not-built page."""
    local = root / dist_dir  # an absolute dist_dir stays as it is
    html = static_routes.content_type(Path(INDEX))
    if not (local / INDEX).is_file():
        return [
            static_routes.text_route(path, NOT_BUILT_STATUS, NOT_BUILT_PAGE, html)
            for path in ("/", f"/{INDEX}")
        ]
    static_routes.check_size(local / INDEX)
    result = [
        static_routes.file_route("/", dist_dir / INDEX, html),
        static_routes.file_route(f"/{INDEX}", dist_dir / INDEX, html),
    ]
    # Hidden files (a tool's stamp or manifest) are nothing a browser asks for.
    top = sorted(
        p for p in local.iterdir() if p.is_file() and p.name != INDEX and not p.name.startswith(".")
    )
    assets = sorted(p for p in (local / ASSETS).rglob("*") if p.is_file())
    for path in [*top, *assets]:
        static_routes.check_size(path)
        relative = path.relative_to(local)
        result.append(
            static_routes.file_route(
                f"/{relative.as_posix()}",
                dist_dir / relative,
                static_routes.content_type(path),
                cache_control(path.name) if relative.parts[0] == ASSETS else static_routes.NO_CACHE,
            )
        )
    return result
