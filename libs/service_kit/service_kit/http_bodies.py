"""A stored file as a stream of google.api.HttpBody messages, for the Download*File RPCs.

Envoy's gRPC-JSON transcoder answers a REST call to such an RPC with the messages' bytes as
the HTTP body and the first message's `content_type` as its Content-Type, so `curl -o` gets
the file itself rather than JSON with base64 chunks in it. The transcoder passes a call's
initial metadata on as response headers: a Content-Disposition there names the file for
`curl -OJ` and browsers.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

from google.api import httpbody_pb2

OCTET_STREAM = "application/octet-stream"
# What the platform writes that `mimetypes` does not know (ONNX has no registered type; this
# is the name its tools use).
KNOWN_TYPES = {".onnx": "application/onnx", ".npz": "application/x-npz"}


def content_type(name: str) -> str:
    """The media type for a file name: by its extension, or application/octet-stream."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in KNOWN_TYPES:
        return KNOWN_TYPES[suffix]
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    # A compressed file (x.csv.gz) is served as the bytes it is, not as what it unpacks to.
    return guessed if guessed and encoding is None else OCTET_STREAM


def content_disposition(name: str) -> str:
    """An attachment header for the last segment of `name` (RFC 6266): a plain ASCII filename
    for old clients and the exact one percent-encoded, so any name is a valid header value."""
    base = PurePosixPath(name).name or "download"
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    exact = urllib.parse.quote(base, safe="")
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}"


async def http_bodies(path: Path, name: str, chunk: int) -> AsyncIterator[httpbody_pb2.HttpBody]:
    """The file at `path` in `chunk`-byte bodies, each typed for `name`. An empty file is one
    empty body: the transcoder takes the Content-Type from the first message, so there is
    always one."""
    kind = content_type(name)
    with path.open("rb") as f:
        first = True
        while True:
            data = await asyncio.to_thread(f.read, chunk)
            if not data and not first:
                return
            yield httpbody_pb2.HttpBody(content_type=kind, data=data)
            if not data:
                return
            first = False
