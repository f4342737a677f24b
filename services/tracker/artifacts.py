"""Run artifacts in a pluggable store (a local directory by default).

Paths are relative, "/"-separated, without "." or ".." segments, so nothing escapes the
run's folder; an upload lands in a temporary file and becomes visible only after its size
and sha256 check out, so a corrupted upload leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from service_kit.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted

MAX_ARTIFACT_BYTES = 2 * 1024**3
_SAFE = re.compile(r"^[A-Za-z0-9._\-+=@ ]+$")


def clean_path(path: str, allow_root: bool = False) -> str:
    """The normalised relative path, or INVALID_ARGUMENT for anything that could escape."""
    if path in ("", "/") and allow_root:
        return ""
    parts = path.split("/")
    bad = (
        not path
        or len(path) > 1000
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") or not _SAFE.match(p) for p in parts)
    )
    if bad:
        raise InvalidArgument(
            f"artifact path {path[:100]!r} must be relative, '/'-separated, without '.' or '..' "
            "segments, using letters, digits and ._-+=@ and spaces",
            [FieldViolation("path", "unsafe path")],
        )
    return str(PurePosixPath(*parts))


class ArtifactStore(Protocol):
    async def write(
        self,
        run_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        declared: Callable[[], tuple[str, int]],
    ) -> tuple[int, str]:
        """Stream into a temporary file; `declared()` (the sha256 and size the client sent,
        known only once the stream ends) must match before the file appears at `path`."""
        ...

    def open(self, run_id: str, path: str) -> Path: ...

    def list(self, run_id: str, path: str) -> list[tuple[str, bool, int]]: ...

    def delete(self, run_id: str, path: str) -> bool: ...

    def delete_run(self, run_id: str) -> None: ...


class LocalArtifactStore:
    def __init__(self, root: Path, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _path(self, run_id: str, path: str) -> Path:
        base = (self.root / run_id).resolve()
        target = (base / path).resolve() if path else base
        if base != target and base not in target.parents:  # belt and braces after clean_path
            raise InvalidArgument("artifact path escapes the run", [FieldViolation("path", "")])
        return target

    async def write(
        self,
        run_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        declared: Callable[[], tuple[str, int]],
    ) -> tuple[int, str]:
        """Stream into a temporary file; `declared()` (the sha256 and size the client sent,
        known only once the stream ends) must match before the file appears at `path`."""
        target = self._path(run_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                async for data in chunks:
                    size += len(data)
                    if size > self.max_bytes:
                        raise ResourceExhausted(f"artifact over {self.max_bytes} bytes")
                    digest.update(data)
                    f.write(data)
            sha256, total = declared()
            if total and size != total:
                raise InvalidArgument(
                    f"upload ended after {size} of {total} bytes",
                    [FieldViolation("chunk.total_size", "size mismatch")],
                )
            if sha256 and digest.hexdigest() != sha256.lower():
                raise InvalidArgument(
                    "sha256 of the uploaded bytes does not match: nothing was stored",
                    [FieldViolation("chunk.sha256", "mismatch")],
                )
            if target.is_dir():
                raise InvalidArgument(f"{path!r} is a directory", [FieldViolation("path", "dir")])
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def open(self, run_id: str, path: str) -> Path:
        target = self._path(run_id, path)
        if not target.is_file():
            raise NotFound(f"no artifact {path!r}")
        return target

    def list(self, run_id: str, path: str) -> list[tuple[str, bool, int]]:
        target = self._path(run_id, path)
        if not target.exists():
            if path:
                raise NotFound(f"no artifact directory {path!r}")
            return []
        if target.is_file():
            return [(path, False, target.stat().st_size)]
        out = []
        for child in sorted(target.iterdir()):
            if child.name.startswith(".upload-"):
                continue
            rel = f"{path}/{child.name}" if path else child.name
            out.append((rel, child.is_dir(), 0 if child.is_dir() else child.stat().st_size))
        return out

    def delete(self, run_id: str, path: str) -> bool:
        target = self._path(run_id, path)
        if target.is_dir():
            shutil.rmtree(target)
            return True
        if target.is_file():
            target.unlink()
            return True
        return False

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self._path(run_id, ""), ignore_errors=True)
