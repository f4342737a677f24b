"""Swagger UI at /docs and the OpenAPI document at /openapi.json, served by Envoy itself.

The UI comes from the pinned PyPI package `swagger-ui-bundle` (no CDN: the page must work with
no internet). `python -m gateway.docs [DIR]` (run by `make setup`) copies its assets and our
page into gateway/docs/; `routes()` gives the Envoy routes that answer /docs, its assets and
/openapi.json with `direct_response` bodies read from those files when Envoy loads its config
(gateway/static_routes.py, shared with the web console's routes), so no extra process serves
them; `install` checks every file fits Envoy's cap on such a body.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from swagger_ui_bundle import swagger_ui_path

from gateway import static_routes

GATEWAY_DIR = Path(__file__).resolve().parent
DEFAULT_DOCS_DIR = GATEWAY_DIR / "docs"
DEFAULT_OPENAPI_FILE = GATEWAY_DIR / "openapi.json"
DOCS_PATH = "/docs"
OPENAPI_PATH = "/openapi.json"

# What the page needs from the distribution: the standalone bundle and its stylesheet.
ASSETS = {
    "swagger-ui-bundle.js": "application/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
INDEX = "index.html"

_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>Neural platform API</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script>
      // The document comes from the same origin, so "Try it out" calls this gateway.
      window.ui = SwaggerUIBundle({
        url: "/openapi.json",
        dom_id: "#swagger-ui",
        deepLinking: true,
        persistAuthorization: true,
        // No badge from the public validator: the page makes no request off this gateway.
        validatorUrl: null,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      });
    </script>
  </body>
</html>
"""


def install(docs_dir: Path = DEFAULT_DOCS_DIR) -> list[Path]:
    """Copy the Swagger UI assets and write the page into `docs_dir`; the files written."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ASSETS:
        target = docs_dir / name
        shutil.copyfile(swagger_ui_path / name, target)
        written.append(target)
    index = docs_dir / INDEX
    index.write_text(_PAGE)
    written.append(index)
    for path in written:
        static_routes.check_size(path)
    return written


def routes(
    docs_dir: Path = DEFAULT_DOCS_DIR, openapi_file: Path = DEFAULT_OPENAPI_FILE
) -> list[dict[str, Any]]:
    """Envoy routes (v3 Route, as YAML/JSON-ready dicts) for /openapi.json, /docs and its
    assets; put them before the API's routes in the virtual host. `docs_dir` and
    `openapi_file` are the paths where Envoy runs (they differ in a container)."""
    html = "text/html; charset=utf-8"
    result = [
        static_routes.file_route(OPENAPI_PATH, openapi_file, "application/json"),
        static_routes.file_route(DOCS_PATH, docs_dir / INDEX, html),
        static_routes.file_route(f"{DOCS_PATH}/", docs_dir / INDEX, html),
    ]
    for name, content_type in ASSETS.items():
        result.append(
            static_routes.file_route(f"{DOCS_PATH}/{name}", docs_dir / name, content_type)
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install Swagger UI's files for /docs.")
    parser.add_argument("docs_dir", nargs="?", type=Path, default=DEFAULT_DOCS_DIR)
    args = parser.parse_args(argv)
    written = install(args.docs_dir)
    print(f"{args.docs_dir}: {len(written)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
