"""The compiler's tables (it owns `compiler_*`; no other service reads them)."""

from __future__ import annotations

from service_kit.jobs import job_table
from service_kit.webhooks import delivery_table
from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, Text

metadata = MetaData()

models = Table(
    "compiler_models",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("name", String(200), nullable=False),
    Column("backend", String(16), nullable=False),
    Column("network", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("ir_json", Text, nullable=False),
    Column("shapes_json", Text, nullable=False),
    Column("total_params", BigInteger, nullable=False),
    Column("hparams_json", Text, nullable=False),
    Column("artifact_name", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    # sha256 of (owner, source, backend, network, hparams): identical requests hit this
    Column("cache_key", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_compiler_models_owner_created", "owner", "created_at"),
)

jobs = job_table(metadata, "compiler")
webhook_deliveries = delivery_table(metadata, "compiler")
