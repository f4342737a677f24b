"""API keys limited to resources ("runs/<id>"), besides RPCs.

Revision ID: authz_0002
Revises: authz_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "authz_0002"
down_revision = "authz_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "authz_api_keys", sa.Column("resources", sa.Text, nullable=False, server_default="")
    )


def downgrade() -> None:
    with op.batch_alter_table("authz_api_keys") as batch:
        batch.drop_column("resources")
