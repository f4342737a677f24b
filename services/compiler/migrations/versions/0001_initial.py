"""Models registry and compile jobs.

Revision ID: compiler_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "compiler_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compiler_models",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("backend", sa.String(16), nullable=False),
        sa.Column("network", sa.String(200), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("ir_json", sa.Text, nullable=False),
        sa.Column("shapes_json", sa.Text, nullable=False),
        sa.Column("total_params", sa.BigInteger, nullable=False),
        sa.Column("hparams_json", sa.Text, nullable=False),
        sa.Column("artifact_name", sa.String(64), nullable=False),
        sa.Column("artifact_size", sa.BigInteger, nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("cache_key", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_compiler_models_owner_created", "compiler_models", ["owner", "created_at"])
    op.create_table(
        "compiler_jobs",
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


def downgrade() -> None:
    op.drop_table("compiler_jobs")
    op.drop_index("ix_compiler_models_owner_created", "compiler_models")
    op.drop_table("compiler_models")
