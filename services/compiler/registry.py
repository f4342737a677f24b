"""Compiling and the registry of compiled models: shared by the RPCs and the worker."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural_dsl import Limits, parse
from neural_dsl.backends import compile_network
from neural_dsl.ir import program_to_json
from service_kit import db, pagination
from service_kit.errors import FieldViolation, InvalidArgument, NotFound
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .tables import models

BACKENDS = ("pytorch", "tensorflow", "onnx")


@dataclass(frozen=True)
class CompileInput:
    owner: str
    source: str
    backend: str
    hparams: dict[str, Any]
    network: str
    name: str

    def cache_key(self) -> str:
        blob = json.dumps(
            [self.owner, self.source, self.backend, self.network, sorted(self.hparams.items())],
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    name: str
    data: bytes
    ir_json: str
    shapes_json: str
    total_params: int
    network: str
    warnings: list[str]


def compile_artifact(req: CompileInput, limits: Limits) -> Artifact:
    """The CPU-bound part (run in a thread or a worker). Raises DSLError for a bad program."""
    program = parse(req.source, limits)
    names = [n.name for n in program.networks]
    if req.network:
        if req.network not in names:
            raise InvalidArgument(
                f"no network {req.network!r} in the program (has: {', '.join(names) or 'none'})",
                [FieldViolation("network", "unknown network")],
            )
        network = program.get(req.network)
    elif len(names) == 1:
        network = program.network
    else:
        raise InvalidArgument(
            f"the program declares {len(names)} networks: name one",
            [FieldViolation("network", "required when there are several")],
        )
    result = compile_network(network, req.backend, req.hparams or None, limits)
    if result.onnx is not None:
        name, data = "model.onnx", result.onnx
    else:
        name, data = "model.py", (result.source or "").encode()
    from neural_dsl.ir import Program

    return Artifact(
        name,
        data,
        json.dumps(program_to_json(Program((result.network,)))),
        json.dumps(result.shapes.to_json()),
        result.shapes.total_params or 0,
        network.name,
        result.warnings,
    )


class Registry:
    def __init__(self, engine: AsyncEngine, storage_dir: Path) -> None:
        self.sessions = db.sessions(engine)
        self.root = storage_dir / "compiler"

    def path(self, model_id: str, artifact_name: str) -> Path:
        return self.root / model_id / artifact_name

    async def find(self, cache_key: str) -> Any | None:
        async with self.sessions() as s:
            return (await s.execute(select(models).where(models.c.cache_key == cache_key))).first()

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
        async with self.sessions() as s:
            row = (await s.execute(select(models).where(models.c.id == model_id))).first()
        if row is None or (owner is not None and row.owner != owner):
            raise NotFound(f"no model {model_id!r}")
        return row

    async def list(
        self, owner: str | None, size: int, token: str, name: str, backend: str
    ) -> tuple[list[Any], str]:
        query = select(models)
        if owner is not None:
            query = query.where(models.c.owner == owner)
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
