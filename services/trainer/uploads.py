"""Uploaded datasets: immutable files under <storage>/datasets/<id>.<npz|csv>, one row each.

An upload streams into a hidden temporary file in that folder while it is hashed; only once the
size, the sha256 the client declared and the content rules (datasets.inspect_file) all check
out is it renamed into place (atomic) and its row inserted. Any failure, a client that goes
away included, removes the temporary file, so a rejected upload leaves neither file nor row.
The file is renamed before the row is inserted: a crash in between leaves an orphan file
(harmless), never a row without its file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural.v1 import common_pb2, trainer_pb2
from service_kit import db, pagination
from service_kit.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from service_kit.job_messages import timestamp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .datasets import FORMATS, Arrays, DatasetError, inspect_file, load_file
from .tables import datasets

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024**2
MAX_NAME_LENGTH = 255  # the name column's width
_TEMP_PREFIX = ".upload-"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_FORMAT_MESSAGES = {
    "npz": trainer_pb2.DATASET_FORMAT_NPZ,
    "csv": trainer_pb2.DATASET_FORMAT_CSV,
}


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    owner: str
    name: str
    format: str  # "npz" | "csv"
    size_bytes: int
    sha256: str
    shapes: dict[str, tuple[int, ...]]
    created_at: dt.datetime


def _record(row: Any) -> DatasetRecord:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=dt.UTC)
    return DatasetRecord(
        id=row.id,
        owner=row.owner,
        name=row.name,
        format=row.format,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        shapes={k: tuple(v) for k, v in json.loads(row.shapes_json).items()},
        created_at=created,
    )


def to_message(rec: DatasetRecord) -> trainer_pb2.Dataset:
    return trainer_pb2.Dataset(
        id=rec.id,
        name=rec.name,
        format=_FORMAT_MESSAGES[rec.format],
        size_bytes=rec.size_bytes,
        sha256=rec.sha256,
        shapes={k: trainer_pb2.ArrayShape(dims=list(v)) for k, v in rec.shapes.items()},
        owner=rec.owner,
        create_time=timestamp(rec.created_at),
    )


def dataset_format(name: str) -> str:
    """The format a file name selects ("npz" or "csv"), or INVALID_ARGUMENT for a name that is
    not a plain file name: empty, over MAX_NAME_LENGTH, with a path separator, a control
    character, or another extension. The name is only stored and shown, never used as a path."""
    ext = name.rpartition(".")[2].lower() if "." in name else ""
    stem = name.rpartition(".")[0]
    problem = (
        "is required on the first chunk"
        if not name
        else f"is longer than {MAX_NAME_LENGTH} characters"
        if len(name) > MAX_NAME_LENGTH
        else "must be a file name, without '/' or '\\'"
        if "/" in name or "\\" in name
        else "must be printable text"
        if not name.isprintable()
        else "must be a name ending in .npz or .csv"
        if ext not in FORMATS or not stem.strip(". ")
        else ""
    )
    if problem:
        raise InvalidArgument(
            f"the dataset name {name[:100]!r} {problem}", [FieldViolation("name", problem)]
        )
    return ext


def _violation(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(message, [FieldViolation(field, message)])


class DatasetStore:
    def __init__(
        self, engine: AsyncEngine, storage_dir: Path, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    ) -> None:
        self.engine = engine
        self.sessions = db.sessions(engine)
        self.root = storage_dir / "datasets"
        self.max_bytes = max_bytes

    def path(self, rec: DatasetRecord) -> Path:
        return self.root / f"{rec.id}.{rec.format}"

    async def upload(self, owner: str, chunks: AsyncIterator[common_pb2.Chunk]) -> DatasetRecord:
        """Receive, check and keep one dataset file (see the module docstring).

        The first chunk names the file (and may declare total_size); offsets are contiguous
        from 0; the last chunk carries the hex sha256 of the whole file, which is required.
        Over `max_bytes` (declared or received) is RESOURCE_EXHAUSTED as soon as it is known;
        every other problem is INVALID_ARGUMENT."""
        first = await anext(aiter(chunks), None)
        if first is None:
            raise _violation("name", "the upload is empty: the first chunk names the file")
        fmt = dataset_format(first.name)
        if first.total_size < 0:
            raise _violation("total_size", "total_size must not be negative")
        if first.total_size > self.max_bytes:
            raise ResourceExhausted(
                f"the dataset is {first.total_size} bytes, over the limit of {self.max_bytes}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=_TEMP_PREFIX, suffix=f".{fmt}")
        tmp = Path(tmp_name)
        final: Path | None = None
        try:
            size, sha256 = await self._receive(fd, first, chunks)
            if first.total_size and size != first.total_size:
                raise _violation(
                    "total_size", f"the upload ended after {size} of {first.total_size} bytes"
                )
            try:
                shapes = await asyncio.to_thread(inspect_file, tmp, fmt)
            except DatasetError as exc:
                raise _violation("data", f"{first.name}: {exc}") from None
            rec = DatasetRecord(
                id=str(uuid.uuid4()),
                owner=owner,
                name=first.name,
                format=fmt,
                size_bytes=size,
                sha256=sha256,
                shapes=shapes,
                created_at=dt.datetime.now(dt.UTC),
            )
            final = self.path(rec)
            os.replace(tmp, final)
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    datasets.insert().values(
                        id=rec.id,
                        owner=owner,
                        name=rec.name,
                        format=fmt,
                        size_bytes=size,
                        sha256=sha256,
                        shapes_json=json.dumps({k: list(v) for k, v in shapes.items()}),
                        created_at=rec.created_at,
                    )
                )
        except BaseException:
            tmp.unlink(missing_ok=True)
            if final is not None:
                final.unlink(missing_ok=True)
            raise
        return rec

    async def _receive(
        self, fd: int, first: common_pb2.Chunk, rest: AsyncIterator[common_pb2.Chunk]
    ) -> tuple[int, str]:
        """Write every chunk's data to `fd` while hashing; (size, hex sha256) once it matches."""
        digest = hashlib.sha256()
        size = 0
        declared = ""

        async def all_chunks() -> AsyncIterator[common_pb2.Chunk]:
            yield first
            async for chunk in rest:
                yield chunk

        with os.fdopen(fd, "wb") as f:
            async for chunk in all_chunks():
                if declared and chunk.data:
                    raise _violation("sha256", "sha256 belongs on the last chunk, after all data")
                if chunk.offset != size:
                    raise _violation(
                        "offset", f"a chunk starts at offset {chunk.offset}, expected {size}"
                    )
                size += len(chunk.data)
                if size > self.max_bytes:
                    raise ResourceExhausted(
                        f"the dataset is over the limit of {self.max_bytes} bytes"
                    )
                if first.total_size and size > first.total_size:
                    raise _violation(
                        "total_size", f"more data than the declared {first.total_size} bytes"
                    )
                if chunk.data:
                    digest.update(chunk.data)
                    await asyncio.to_thread(f.write, chunk.data)
                declared = chunk.sha256 or declared
        if size == 0:
            raise _violation("data", "the uploaded file is empty")
        if not _SHA256.match(declared):
            raise _violation(
                "sha256", "the last chunk must carry the file's sha256 as 64 hex digits"
            )
        if digest.hexdigest() != declared.lower():
            raise _violation(
                "sha256", "the sha256 of the uploaded bytes does not match: nothing was stored"
            )
        return size, digest.hexdigest()

    async def get(self, dataset_id: str, owner: str | None) -> DatasetRecord:
        """The dataset; NOT_FOUND when it does not exist or belongs to another owner (None is
        an admin, who sees every dataset)."""
        async with self.sessions() as s:
            row = (await s.execute(select(datasets).where(datasets.c.id == dataset_id))).first()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(f"no dataset {dataset_id!r}")
        return _record(row)

    async def list(
        self, owner: str | None, size: int, token: str, name_contains: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        """One page, newest first, and the next page's token ("" at the end)."""
        query = select(datasets)
        if owner is not None:
            query = query.where(datasets.c.owner == owner)
        if name_contains:
            query = query.where(datasets.c.name.contains(name_contains, autoescape=True))
        rows, next_token = await pagination.newest_first(
            self.sessions, datasets, query, token, size
        )
        return [_record(r) for r in rows], next_token

    async def delete(self, dataset_id: str, owner: str | None, in_use: bool) -> DatasetRecord:
        """Remove the row, then the file. `in_use` (a queued or running job trains on it, as
        the caller found) is FAILED_PRECONDITION, so a delete never breaks a job half way."""
        rec = await self.get(dataset_id, owner)
        if in_use:
            raise FailedPrecondition(
                f"dataset {dataset_id} is used by a queued or running job: cancel it or wait"
            )
        async with db.transaction(self.sessions) as s:
            await s.execute(delete(datasets).where(datasets.c.id == rec.id))
        self.path(rec).unlink(missing_ok=True)
        return rec

    def load(self, rec: DatasetRecord) -> Arrays:
        """The dataset's arrays (blocking: run it in a thread or a worker)."""
        path = self.path(rec)
        if not path.is_file():
            raise DatasetError(f"the file of dataset {rec.id} is missing from storage")
        return load_file(path, rec.format)

    def sweep(self, older_than_s: float = 24 * 3600) -> int:
        """Remove temporary files that a killed process left behind; how many went. Only old
        ones, since another replica sharing the storage may be receiving one right now."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob(f"{_TEMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
