"""The registry of compiled models: their rows and artifact files, shared by the RPCs and the
worker. Compiling itself is `compile_step.py`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from service_kit import db, owners, pagination
from service_kit.errors import NotFound, shown
from service_kit.keyed_reads import KeyedReads
from sqlalchemy import bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .compile_step import Artifact, CompileInput
from .tables import models

# The keyed reads of GetModel, Download*, Delete and Compile's cache: built once (see
# service_kit.keyed_reads).
BY_ID = select(models).where(models.c.id == bindparam("id"))
BY_CACHE_KEY = select(models).where(models.c.cache_key == bindparam("key"))


class Registry:
    def __init__(self, engine: AsyncEngine, storage_dir: Path) -> None:
        self.sessions = db.sessions(engine)
        self.reads = KeyedReads(engine)
        self.root = storage_dir / "compiler"

    def path(self, model_id: str, artifact_name: str) -> Path:
        return self.root / model_id / artifact_name

    async def find(self, cache_key: str) -> Any | None:
        return await self.reads.first(BY_CACHE_KEY, {"key": cache_key})

    async def store(self, req: CompileInput, art: Artifact) -> tuple[Any, bool]:
        """Write the artifact, then its row; (row, cached) when an identical one exists."""
        key = req.cache_key()
        existing = await self.find(key)
        if existing is not None:
            return existing, True
        model_id = str(uuid.uuid4())
        path = self.path(model_id, art.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(art.data)
        os.replace(tmp, path)  # a reader never sees half a file
        row = dict(
            id=model_id,
            owner=req.owner,
            name=req.name or art.network,
            backend=req.backend,
            network=art.network,
            source=req.source,
            ir_json=art.ir_json,
            shapes_json=art.shapes_json,
            total_params=art.total_params,
            hparams_json=json.dumps(req.hparams),
            artifact_name=art.name,
            artifact_size=len(art.data),
            artifact_sha256=hashlib.sha256(art.data).hexdigest(),
            cache_key=key,
            created_at=dt.datetime.now(dt.UTC),
        )
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(models.insert().values(**row))
        except IntegrityError:  # a concurrent identical request won the race
            shutil.rmtree(path.parent, ignore_errors=True)
            found = await self.find(key)
            assert found is not None
            return found, True
        return await self.get(model_id, None), False

    async def get(self, model_id: str, owner: str | None) -> Any:
        row = await self.reads.first(BY_ID, {"id": model_id})
        if row is None or not owners.visible(row.owner, owner):
            raise NotFound(f"no model {shown(model_id)}")
        return row

    async def list(
        self, owner: str | None, size: int, token: str, name: str, backend: str
    ) -> tuple[list[Any], str]:
        query = owners.restrict(select(models), models.c.owner, owner)
        if name:
            query = query.where(models.c.name.contains(name, autoescape=True))
        if backend:
            query = query.where(models.c.backend == backend)
        return await pagination.newest_first(self.sessions, models, query, token, size)

    async def delete(self, model_id: str, owner: str | None) -> None:
        row = await self.get(model_id, owner)
        async with db.transaction(self.sessions) as s:
            await s.execute(delete(models).where(models.c.id == row.id))
        shutil.rmtree(self.root / row.id, ignore_errors=True)
