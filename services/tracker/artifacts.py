"""Run artifacts in a pluggable store (a local directory by default).

Paths are relative, "/"-separated, without "." or ".." segments, so nothing escapes the
run's folder. An upload follows the rules every upload shares (service_kit.chunked_upload:
offsets checked, sha256 required and verified, `NEURAL_MAX_UPLOAD_BYTES`): it lands in a
hidden temporary file and becomes visible, by an atomic rename, only once it checks out, so
a corrupted or abandoned upload leaves nothing behind. A path is a file or a directory, never
both: `f` then `f/x` (or the reverse) is FAILED_PRECONDITION."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from service_kit import chunked_upload
from service_kit.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound

MAX_PATH = 1000  # the path column's width
MAX_SEGMENT_BYTES = 255  # a file name's limit on every common file system
_SAFE = re.compile(r"^[A-Za-z0-9._\-+=@ ]+$")


def clean_path(path: str, allow_root: bool = False) -> str:
    """The normalised relative path, or INVALID_ARGUMENT for anything that could escape, that
    no file system could hold, or that names an upload in progress."""
    if path in ("", "/") and allow_root:
        return ""
    parts = path.split("/")
    bad = (
        not path
        or len(path) > MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") or not _SAFE.match(p) for p in parts)
    )
    if bad:
        raise InvalidArgument(
            f"artifact path {path[:100]!r} must be relative, '/'-separated, at most {MAX_PATH} "
            "characters, without '.' or '..' segments, using letters, digits and ._-+=@ and "
            "spaces",
            [FieldViolation("path", "unsafe path")],
        )
    long = next((p for p in parts if len(p.encode()) > MAX_SEGMENT_BYTES), None)
    if long is not None:
        raise InvalidArgument(
            f"artifact path segment {long[:50]!r}... is longer than {MAX_SEGMENT_BYTES} bytes",
            [FieldViolation("path", f"a segment over {MAX_SEGMENT_BYTES} bytes")],
        )
    hidden = next((p for p in parts if p.startswith(chunked_upload.TEMP_PREFIX)), None)
    if hidden is not None:
        raise InvalidArgument(
            f"artifact names may not begin with {chunked_upload.TEMP_PREFIX!r} (uploads in "
            f"progress use them): {hidden[:50]!r}",
            [FieldViolation("path", f"begins with {chunked_upload.TEMP_PREFIX}")],
        )
    return str(PurePosixPath(*parts))


class ArtifactStore(Protocol):
    async def write(
        self, run_id: str, path: str, first: Any, rest: AsyncIterator[Any]
    ) -> tuple[int, str]:
        """Receive the chunks (`neural.v1.Chunk`: `first`, then `rest`) by the rules of
        service_kit.chunked_upload and keep the file at `path`; (size, hex sha256)."""
        ...

    def open(self, run_id: str, path: str) -> Path: ...

    def list(self, run_id: str, path: str) -> list[tuple[str, bool, int]]: ...

    def delete(self, run_id: str, path: str) -> bool: ...

    def delete_run(self, run_id: str) -> None: ...


def _file_in_the_way(found: str, path: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"artifact {found!r} is a file, so {path!r} cannot be stored under it: delete it first "
        "or choose another path"
    )


def _directory_in_the_way(path: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"artifact path {path!r} is a directory of artifacts, so a file cannot be stored there: "
        "delete it first or choose another path"
    )


class LocalArtifactStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _path(self, run_id: str, path: str) -> Path:
        base = (self.root / run_id).resolve()
        target = (base / path).resolve() if path else base
        if base != target and base not in target.parents:  # belt and braces after clean_path
            raise InvalidArgument("artifact path escapes the run", [FieldViolation("path", "")])
        return target

    def _folder(self, run_id: str, path: str) -> Path:
        """The target of `path`, its folders made; FAILED_PRECONDITION when a file stands
        where a folder is needed or a folder where the file goes."""
        target = self._path(run_id, path)
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts)):
            above = self._path(run_id, "/".join(parts[:i]))
            if above.exists() and not above.is_dir():
                raise _file_in_the_way("/".join(parts[:i]), path)
        if target.is_dir():
            raise _directory_in_the_way(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file uploaded there meanwhile
            raise _file_in_the_way(str(PurePosixPath(path).parent), path) from None
        return target

    async def write(
        self, run_id: str, path: str, first: Any, rest: AsyncIterator[Any]
    ) -> tuple[int, str]:
        target = self._folder(run_id, path)
        async with chunked_upload.receive(
            first,
            rest,
            target.parent,
            self.max_bytes,
            what=f"artifact {path!r}",
            field_prefix="chunk.",
            allow_empty=True,
        ) as received:
            try:
                received.publish(target)
            except IsADirectoryError:  # a folder made there while the bytes came in
                raise _directory_in_the_way(path) from None
            except FileNotFoundError:  # its folder deleted while the bytes came in
                raise FailedPrecondition(
                    f"the folder of artifact {path!r} was deleted during the upload: nothing "
                    "was stored"
                ) from None
        return received.size, received.sha256

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
            if child.name.startswith(chunked_upload.TEMP_PREFIX):
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
