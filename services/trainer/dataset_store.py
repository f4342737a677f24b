"""Uploaded datasets: immutable files under <storage>/datasets/<id>.<npz|csv>, one row each.

An upload streams into a hidden temporary file in that folder while it is hashed, by the rules
every upload shares (service_kit.chunked_upload); only once the size, the sha256 the client
declared and the content rules (dataset_files.inspect_file) all check out is it renamed into
place (atomic) and its row inserted. Any failure, a client that goes away included, removes the
temporary file, so a rejected upload leaves neither file nor row.
The file is renamed before the row is inserted: a crash in between leaves an orphan file
(harmless), never a row without its file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural.v1 import common_pb2, trainer_pb2
from service_kit import chunked_upload, db, owners, pagination
from service_kit.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    shown,
)
from service_kit.job_messages import timestamp
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from .dataset_files import FORMATS, inspect_file, load_file
from .datasets import Arrays, DatasetError
from .tables import datasets

DEFAULT_MAX_UPLOAD_BYTES = 512 * 1024**2
MAX_NAME_LENGTH = 255  # the name column's width
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
    character, another extension, or the prefix of uploads in progress (every upload's temporary
    file begins with it, so no kept name may). The name is only stored and shown, never used as a
    path."""
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
        else f"must not begin with {chunked_upload.TEMP_PREFIX!r} (kept for uploads in progress)"
        if name.startswith(chunked_upload.TEMP_PREFIX)
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
        self.root.mkdir(parents=True, exist_ok=True)
        final: Path | None = None
        try:
            async with chunked_upload.receive(
                first, chunks, self.root, self.max_bytes, what="the dataset", suffix=f".{fmt}"
            ) as received:
                try:
                    shapes = await asyncio.to_thread(inspect_file, received.path, fmt)
                except DatasetError as exc:
                    raise _violation("data", f"{first.name}: {exc}") from None
                rec = DatasetRecord(
                    id=str(uuid.uuid4()),
                    owner=owner,
                    name=first.name,
                    format=fmt,
                    size_bytes=received.size,
                    sha256=received.sha256,
                    shapes=shapes,
                    created_at=dt.datetime.now(dt.UTC),
                )
                final = self.path(rec)
                received.publish(final)
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    datasets.insert().values(
                        id=rec.id,
                        owner=owner,
                        name=rec.name,
                        format=fmt,
                        size_bytes=rec.size_bytes,
                        sha256=rec.sha256,
                        shapes_json=json.dumps({k: list(v) for k, v in shapes.items()}),
                        created_at=rec.created_at,
                    )
                )
        except BaseException:
            if final is not None:
                final.unlink(missing_ok=True)
            raise
        return rec

    async def get(self, dataset_id: str, owner: str | None) -> DatasetRecord:
        """The dataset; NOT_FOUND when it does not exist or belongs to another owner (None is
        an admin, who sees every dataset)."""
        async with self.sessions() as s:
            row = (await s.execute(select(datasets).where(datasets.c.id == dataset_id))).first()
        if row is None or not owners.visible(row.owner, owner):
            raise NotFound(f"no dataset {shown(dataset_id)}")
        return _record(row)

    async def list(
        self, owner: str | None, size: int, token: str, name_contains: str = ""
    ) -> tuple[list[DatasetRecord], str]:
        """One page, newest first, and the next page's token ("" at the end)."""
        query = owners.restrict(select(datasets), datasets.c.owner, owner)
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
        for tmp in self.root.glob(f"{chunked_upload.TEMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
