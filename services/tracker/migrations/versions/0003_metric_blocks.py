"""tracker_metric_blocks: a bulk batch's points per key as one row of packed arrays.

Nothing moves on upgrade: existing points stay rows in tracker_metrics, which reads merge
with the blocks. Downgrade unpacks the blocks back into rows.

Revision ID: tracker_0003
Revises: tracker_0002
"""

import numpy as np
import sqlalchemy as sa
from alembic import op

revision = "tracker_0003"
down_revision = "tracker_0002"
branch_labels = None
depends_on = None

INDEX = "ix_tracker_metric_blocks_run_key_first"


def upgrade() -> None:
    op.create_table(
        "tracker_metric_blocks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("first_step", sa.BigInteger, nullable=False),
        sa.Column("last_step", sa.BigInteger, nullable=False),
        sa.Column("point_count", sa.Integer, nullable=False),
        sa.Column("steps", sa.LargeBinary, nullable=False),
        sa.Column("metric_values", sa.LargeBinary, nullable=False),
        sa.Column("timestamps", sa.LargeBinary, nullable=False),
    )
    op.create_index(INDEX, "tracker_metric_blocks", ["run_id", "key", "first_step"])


def downgrade() -> None:
    bind = op.get_bind()
    points = sa.table(
        "tracker_metrics",
        sa.column("run_id"),
        sa.column("key"),
        sa.column("step"),
        sa.column("value"),
        sa.column("timestamp"),
    )
    blocks = bind.execute(
        sa.text("SELECT run_id, key, steps, metric_values, timestamps FROM tracker_metric_blocks")
    ).all()
    for run_id, key, steps, values, stamps in blocks:
        rows = zip(
            np.frombuffer(steps, "<i8").tolist(),
            np.frombuffer(values, "<f8").tolist(),
            np.frombuffer(stamps, "<i8").tolist(),
            strict=True,
        )
        bind.execute(
            points.insert(),
            [dict(run_id=run_id, key=key, step=s, value=v, timestamp=t) for s, v, t in rows],
        )
    op.drop_index(INDEX, "tracker_metric_blocks")
    op.drop_table("tracker_metric_blocks")
