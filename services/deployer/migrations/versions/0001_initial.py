"""Deployments, their versions and their replica processes.

Revision ID: deployer_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "deployer_0001"
down_revision = None
branch_labels = None
depends_on = None


def _fk(table: str) -> sa.ForeignKey:
    return sa.ForeignKey(f"{table}.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "deployer_deployments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("runtime", sa.String(16), nullable=False, server_default="onnx"),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("min_replicas", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_replicas", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ready_replicas", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_batch_size", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_batch_delay_us", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cpu", sa.String(32), nullable=False, server_default=""),
        sa.Column("memory", sa.String(32), nullable=False, server_default=""),
        sa.Column("gpu", sa.Integer, nullable=False, server_default="0"),
        sa.Column("endpoint", sa.String(500), nullable=False, server_default=""),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_deployer_deployments_owner_created", "deployer_deployments", ["owner", "created_at"]
    )
    op.create_table(
        "deployer_versions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("deployment_id", sa.String(36), _fk("deployer_deployments"), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("artifact_path", sa.String(1000), nullable=False, server_default=""),
        sa.Column("model_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("model_path", sa.String(1000), nullable=False),
        sa.Column("traffic_percent", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "deployment_id", "version", name="uq_deployer_versions_deployment_version"
        ),
    )
    op.create_table(
        "deployer_replicas",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("deployment_id", sa.String(36), _fk("deployer_deployments"), nullable=False),
        sa.Column("version_id", sa.String(36), _fk("deployer_versions"), nullable=False),
        sa.Column("controller_id", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("port", sa.Integer, nullable=False, server_default="0"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ready_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_deployer_replicas_deployment", "deployer_replicas", ["deployment_id", "state"]
    )


def downgrade() -> None:
    for name in ("deployer_replicas", "deployer_versions", "deployer_deployments"):
        op.drop_table(name)
