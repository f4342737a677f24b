"""The trainer's tables (it owns `trainer_*`; no other service reads them)."""

from __future__ import annotations

from service_kit.jobs import job_table
from service_kit.webhooks import delivery_table
from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, String, Table, Text

metadata = MetaData()

jobs = job_table(metadata, "trainer")

# Uploaded datasets: immutable files under <storage>/datasets/<id>, described here.
datasets = Table(
    "trainer_datasets",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("name", String(255), nullable=False),
    Column("format", String(8), nullable=False),  # "npz" | "csv"
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("shapes_json", Text, nullable=False),  # {"x": [n, ...], "y": [n]}
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_trainer_datasets_owner_created", "owner", "created_at"),
)

deliveries = delivery_table(metadata, "trainer")
