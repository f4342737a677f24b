"""Rollouts as jobs: the deployer's jobs, their webhook deliveries, and each version's job.

Revision ID: deployer_0002
Revises: deployer_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "deployer_0002"
down_revision = "deployer_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployer_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("result", sa.String(200), nullable=False, server_default=""),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("details", sa.Text, nullable=False, server_default="{}"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "deployer_webhook_deliveries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("delivery_id", sa.String(36), nullable=False, index=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("status_code", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivered", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_deployer_webhook_deliveries_job", "deployer_webhook_deliveries", ["job_id", "id"]
    )
    with op.batch_alter_table("deployer_versions") as batch:
        batch.add_column(
            sa.Column("rollout_job_id", sa.String(36), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("deployer_versions") as batch:
        batch.drop_column("rollout_job_id")
    op.drop_index("ix_deployer_webhook_deliveries_job", "deployer_webhook_deliveries")
    op.drop_table("deployer_webhook_deliveries")
    op.drop_table("deployer_jobs")
