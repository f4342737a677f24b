"""Receiving one file as a client-streamed sequence of `neural.v1.Chunk`s: the rules every
upload RPC (a dataset, a run artifact) shares.

- The first chunk may declare `total_size`; over the limit it is RESOURCE_EXHAUSTED before any
  data is read, and the received size must then match it.
- Each chunk's `offset` is the number of bytes sent before it (no gaps, no overlaps, no reorder).
- The last chunk carries the hex sha256 of the whole file: required, and checked.
- More than `max_bytes` (`NEURAL_MAX_UPLOAD_BYTES`) is RESOURCE_EXHAUSTED as soon as it is
  received; every other mistake is INVALID_ARGUMENT naming the field.
- The bytes go to a hidden temporary file (TEMP_PREFIX) in the destination's folder, so the
  final rename is atomic: no half-written file is ever visible under its name. Whatever ends
  the upload early (a mistake, a client that goes away, a check of the caller's) removes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FieldViolation, InvalidArgument, ResourceExhausted

TEMP_PREFIX = ".upload-"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class Received:
    """A complete, checked upload, still in its temporary file."""

    path: Path
    size: int
    sha256: str  # lower-case hex

    def publish(self, target: Path) -> None:
        """Move the file to `target` (in the same folder as the temporary file: atomic)."""
        os.replace(self.path, target)


def _violation(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, [FieldViolation(field, message)])


@asynccontextmanager
async def receive(
    first: Any,
    rest: AsyncIterator[Any],
    folder: Path,
    max_bytes: int,
    *,
    what: str = "the file",
    field_prefix: str = "",
    allow_empty: bool = False,
    suffix: str = "",
) -> AsyncIterator[Received]:
    """Receive `first` and the chunks of `rest` into a temporary file in `folder` (which
    exists), checked by the rules above; the body sees it as `Received` and publishes it, or
    not. The temporary file is gone when the block ends. `what` names the file in messages
    ("the dataset"); `field_prefix` is where the chunk sits in the request ("chunk.")."""
    total = first.total_size
    if total < 0:
        raise _violation(f"{field_prefix}total_size", "total_size must not be negative")
    if total > max_bytes:
        raise ResourceExhausted(f"{what} is {total} bytes, over the limit of {max_bytes}")
    fd, name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    tmp = Path(name)
    try:
        size, sha256 = await _write(fd, first, rest, max_bytes, what, field_prefix)
        if size == 0 and not allow_empty:
            raise _violation(f"{field_prefix}data", f"{what} is empty")
        if total and size != total:
            raise _violation(
                f"{field_prefix}total_size", f"the upload ended after {size} of {total} bytes"
            )
        yield Received(tmp, size, sha256)
    finally:
        tmp.unlink(missing_ok=True)


async def _write(
    fd: int, first: Any, rest: AsyncIterator[Any], max_bytes: int, what: str, prefix: str
) -> tuple[int, str]:
    """Write every chunk's data to `fd` while hashing; (size, hex sha256) once it matches."""
    digest = hashlib.sha256()
    size = 0
    declared = ""
    total = first.total_size

    async def chunks() -> AsyncIterator[Any]:
        yield first
        async for chunk in rest:
            yield chunk

    with os.fdopen(fd, "wb") as f:
        async for chunk in chunks():
            if declared and chunk.data:
                raise _violation(
                    f"{prefix}sha256", "sha256 belongs on the last chunk, after all data"
                )
            if chunk.offset != size:
                raise _violation(
                    f"{prefix}offset", f"a chunk starts at offset {chunk.offset}, expected {size}"
                )
            size += len(chunk.data)
            if size > max_bytes:
                raise ResourceExhausted(f"{what} is over the limit of {max_bytes} bytes")
            if total and size > total:
                raise _violation(
                    f"{prefix}total_size", f"more data than the declared {total} bytes"
                )
            if chunk.data:
                digest.update(chunk.data)
                await asyncio.to_thread(f.write, chunk.data)
            declared = chunk.sha256 or declared
    if not _SHA256.match(declared):
        raise _violation(
            f"{prefix}sha256", "the last chunk must carry the file's sha256 as 64 hex digits"
        )
    if digest.hexdigest() != declared.lower():
        raise _violation(
            f"{prefix}sha256", "the sha256 of the uploaded bytes does not match: nothing was stored"
        )
    return size, digest.hexdigest()
