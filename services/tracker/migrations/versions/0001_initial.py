"""Experiments, runs, params, tags, metrics (history and latest) and artifacts.

Revision ID: tracker_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "tracker_0001"
down_revision = None
branch_labels = None
depends_on = None


def _run_fk() -> sa.ForeignKey:
    return sa.ForeignKey("tracker_runs.id", ondelete="CASCADE")


def upgrade() -> None:
    op.create_table(
        "tracker_experiments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("owner", "name", name="uq_tracker_experiments_owner_name"),
    )
    op.create_table(
        "tracker_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "experiment_id",
            sa.String(36),
            sa.ForeignKey("tracker_experiments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_tracker_runs_experiment_created", "tracker_runs", ["experiment_id", "created_at"]
    )
    for name in ("tracker_params", "tracker_tags"):
        op.create_table(
            name,
            sa.Column("run_id", sa.String(36), _run_fk(), primary_key=True),
            sa.Column("key", sa.String(250), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
    op.create_index("ix_tracker_params_key_value", "tracker_params", ["key", "value"])
    op.create_table(
        "tracker_metrics",
        sa.Column("run_id", sa.String(36), _run_fk(), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_tracker_metrics_run_key_step", "tracker_metrics", ["run_id", "key", "step", "timestamp"]
    )
    op.create_table(
        "tracker_latest_metrics",
        sa.Column("run_id", sa.String(36), _run_fk(), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_tracker_latest_key_value", "tracker_latest_metrics", ["key", "value"])
    op.create_table(
        "tracker_artifacts",
        sa.Column("run_id", sa.String(36), _run_fk(), primary_key=True),
        sa.Column("path", sa.String(1000), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for name in (
        "tracker_artifacts",
        "tracker_latest_metrics",
        "tracker_metrics",
        "tracker_tags",
        "tracker_params",
        "tracker_runs",
        "tracker_experiments",
    ):
        op.drop_table(name)
