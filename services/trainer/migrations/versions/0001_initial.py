"""Training and search jobs, uploaded datasets, webhook delivery attempts.

Revision ID: trainer_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "trainer_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trainer_jobs",
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
        "trainer_datasets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("shapes_json", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_trainer_datasets_owner_created", "trainer_datasets", ["owner", "created_at"]
    )
    op.create_table(
        "trainer_webhook_deliveries",
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
        "ix_trainer_webhook_deliveries_job", "trainer_webhook_deliveries", ["job_id", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_trainer_webhook_deliveries_job", "trainer_webhook_deliveries")
    op.drop_table("trainer_webhook_deliveries")
    op.drop_index("ix_trainer_datasets_owner_created", "trainer_datasets")
    op.drop_table("trainer_datasets")
    op.drop_table("trainer_jobs")
