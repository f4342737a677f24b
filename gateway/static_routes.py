"""Envoy routes that answer a file itself (`direct_response`), for the gateway's static pages:
the documentation (gateway/docs.py) and the web console (gateway/console.py).

Envoy reads each body when it loads its configuration, so no process serves them and a file
changed later is seen at the next start. A body is capped at the route configuration's
`max_direct_response_body_size_bytes` (gateway.render sets it to MAX_DIRECT_RESPONSE_BODY_BYTES):
`check_size` refuses a file over it before Envoy would refuse the whole configuration.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

# The minified Swagger UI bundle is about 1 MiB; room for a newer release or a larger console
# bundle without touching Envoy's config.
MAX_DIRECT_RESPONSE_BODY_BYTES = 4 * 1024 * 1024
# Filters that must not run for these public, static answers: no credentials are needed to
# read a page (the console asks for a key itself, for its API calls), and they are not gRPC
# methods for the transcoder to map.
SKIPPED_FILTERS = (
    "envoy.filters.http.ext_authz",
    "envoy.filters.http.grpc_json_transcoder",
)
NO_CACHE = "no-cache"
# For files whose name carries a hash of their content: a new build has new names.
IMMUTABLE = "public, max-age=31536000, immutable"

# The types a browser is strict about (a module script must be served as JavaScript); Python's
# table varies between versions and machines (/etc/mime.types), so these are fixed here.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".txt": "text/plain; charset=utf-8",
}


def content_type(path: Path) -> str:
    """The content type a browser expects for `path`, from its extension."""
    known = _TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def check_size(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_DIRECT_RESPONSE_BODY_BYTES:
        raise ValueError(f"{path} is {size} bytes, over Envoy's direct response cap")


def skip_filters() -> dict[str, Any]:
    return {
        name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        for name in SKIPPED_FILTERS
    }


def _headers(pairs: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in pairs.items()
    ]


def file_route(
    path: str, filename: Path, content_type: str, cache_control: str = NO_CACHE
) -> dict[str, Any]:
    """A route (v3 Route as a dict) answering exactly `path` with the file's bytes; `filename`
    is where Envoy runs (relative to its working directory, or absolute)."""
    return {
        "match": {"path": path},
        "direct_response": {"status": 200, "body": {"filename": str(filename)}},
        "response_headers_to_add": _headers(
            {"content-type": content_type, "cache-control": cache_control}
        ),
        "typed_per_filter_config": skip_filters(),
    }


def text_route(path: str, status: int, body: str, content_type: str) -> dict[str, Any]:
    """A route answering exactly `path` with an inline body (a placeholder page)."""
    return {
        "match": {"path": path},
        "direct_response": {"status": status, "body": {"inline_string": body}},
        "response_headers_to_add": _headers(
            {"content-type": content_type, "cache-control": NO_CACHE}
        ),
        "typed_per_filter_config": skip_filters(),
    }
