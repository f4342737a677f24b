"""Webhook delivery attempts of compile jobs.

Revision ID: compiler_0002
Revises: compiler_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "compiler_0002"
down_revision = "compiler_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compiler_webhook_deliveries",
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
        "ix_compiler_webhook_deliveries_job", "compiler_webhook_deliveries", ["job_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_compiler_webhook_deliveries_job", "compiler_webhook_deliveries")
    op.drop_table("compiler_webhook_deliveries")
