"""The authz service's API keys and audit log.

Revision ID: authz_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "authz_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "authz_api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("scopes", sa.Text, nullable=False, server_default=""),
        sa.Column("replaced_by", sa.String(36)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_authz_api_keys_prefix", "authz_api_keys", ["prefix"])
    op.create_table(
        "authz_audit_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("action", sa.String(300), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("allowed", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(300), nullable=False),
    )
    op.create_index("authz_audit_events_at", "authz_audit_events", ["at"])
    op.create_index("authz_audit_events_subject_at", "authz_audit_events", ["subject", "at"])


def downgrade() -> None:
    op.drop_table("authz_audit_events")
    op.drop_table("authz_api_keys")
