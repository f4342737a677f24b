"""tracker_metrics without its foreign key to tracker_runs.

PostgreSQL checks a foreign key once per inserted row, which doubled the cost of metric
ingest. A batch is now written in one transaction together with its tracker_latest_metrics
upsert, whose foreign key checks the run once per batch; PurgeExperiment deletes the points.

Revision ID: tracker_0002
Revises: tracker_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0002"
down_revision = "tracker_0001"
branch_labels = None
depends_on = None

INDEX = "ix_tracker_metrics_run_key_step"


def _rebuild_sqlite(with_fk: bool) -> None:
    """SQLite cannot drop or add a constraint: copy the rows into a new table."""
    run_id = (
        sa.Column(
            "run_id",
            sa.String(36),
            sa.ForeignKey("tracker_runs.id", ondelete="CASCADE"),
            nullable=False,
        )
        if with_fk
        else sa.Column("run_id", sa.String(36), nullable=False)
    )
    op.create_table(
        "tracker_metrics_new",
        run_id,
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
    )
    op.execute(
        "INSERT INTO tracker_metrics_new (run_id, key, step, value, timestamp) "
        "SELECT run_id, key, step, value, timestamp FROM tracker_metrics"
    )
    op.drop_index(INDEX, "tracker_metrics")
    op.drop_table("tracker_metrics")
    op.rename_table("tracker_metrics_new", "tracker_metrics")
    op.create_index(INDEX, "tracker_metrics", ["run_id", "key", "step", "timestamp"])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite(with_fk=False)
        return
    for fk in sa.inspect(bind).get_foreign_keys("tracker_metrics"):
        op.drop_constraint(fk["name"], "tracker_metrics", type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_fk=True)
        return
    op.create_foreign_key(
        "tracker_metrics_run_id_fkey",
        "tracker_metrics",
        "tracker_runs",
        ["run_id"],
        ["id"],
        ondelete="CASCADE",
    )
