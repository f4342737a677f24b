"""The deployer's tables (it owns `deployer_*`).

The server writes what is wanted (deployments, their versions, desired replicas); the
controller writes what is (replica processes, readiness, state), so each column has one
writer but for `state` and `error`, which the server sets to DELETING and the controller to
READY / FAILED."""

from __future__ import annotations

from service_kit.jobs import job_table
from service_kit.webhooks import delivery_table
from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

deployments = Table(
    "deployer_deployments",
    metadata,
    Column("id", String(36), primary_key=True),
    # A DNS-1123 label, unique platform-wide: it names the route and the Kubernetes objects.
    Column("name", String(63), nullable=False, unique=True),
    Column("owner", String(200), nullable=False),
    Column("state", String(16), nullable=False),  # PENDING | READY | FAILED | DELETING
    Column("runtime", String(16), nullable=False, server_default="onnx"),
    Column("replicas", Integer, nullable=False),  # desired
    Column("min_replicas", Integer, nullable=False, server_default="0"),
    Column("max_replicas", Integer, nullable=False, server_default="0"),
    Column("ready_replicas", Integer, nullable=False, server_default="0"),
    Column("max_batch_size", Integer, nullable=False, server_default="0"),
    Column("max_batch_delay_us", Integer, nullable=False, server_default="0"),
    Column("cpu", String(32), nullable=False, server_default=""),
    Column("memory", String(32), nullable=False, server_default=""),
    Column("gpu", Integer, nullable=False, server_default="0"),
    Column("endpoint", String(500), nullable=False, server_default=""),
    Column("error", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    Index("ix_deployer_deployments_owner_created", "owner", "created_at"),
)

versions = Table(
    "deployer_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "deployment_id",
        String(36),
        ForeignKey("deployer_deployments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("version", String(16), nullable=False),  # "v1", "v2", ...: the OIP model_version
    # The source: a run's artifact (run_id + artifact_path) or a compiler model (model_id).
    Column("run_id", String(64), nullable=False, server_default=""),
    Column("artifact_path", String(1000), nullable=False, server_default=""),
    Column("model_id", String(64), nullable=False, server_default=""),
    Column("model_path", String(1000), nullable=False),  # the local model.onnx
    Column("traffic_percent", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # PENDING | SERVING | FAILED | RETIRED
    Column("error", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # the rollout job that brought it (deployer_jobs.id); empty for the first version
    Column("rollout_job_id", String(36), nullable=False, server_default=""),
    UniqueConstraint("deployment_id", "version", name="uq_deployer_versions_deployment_version"),
)

# One row per replica process a controller runs; the controller that started it owns it.
replicas = Table(
    "deployer_replicas",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "deployment_id",
        String(36),
        ForeignKey("deployer_deployments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "version_id",
        String(36),
        ForeignKey("deployer_versions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("controller_id", String(64), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("port", Integer, nullable=False, server_default="0"),  # 0 until it listens
    Column("state", String(16), nullable=False),  # STARTING | READY | STOPPING
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ready_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Index("ix_deployer_replicas_deployment", "deployment_id", "state"),
)

# Rollouts are jobs on the kit's lifecycle (kind "rollout"), driven by the controller.
jobs = job_table(metadata, "deployer")
webhook_deliveries = delivery_table(metadata, "deployer")
