"""The tracker's tables (it owns `tracker_*`).

Metric points are append-only: a trickle as rows keyed by (run, key, step), bulk batches as
blocks of packed arrays (services/tracker/points/ says why); `tracker_latest_metrics` keeps the
newest point of each series, so search and listings never scan the history, and
`tracker_metric_summaries` a few points per bucket of steps, so downsampling never does either."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

experiments = Table(
    "tracker_experiments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("name", String(500), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True)),
    UniqueConstraint("owner", "name", name="uq_tracker_experiments_owner_name"),
)

runs = Table(
    "tracker_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "experiment_id",
        String(36),
        ForeignKey("tracker_experiments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("owner", String(200), nullable=False),
    Column("name", String(500), nullable=False),
    Column("status", String(16), nullable=False),
    Column("job_id", String(64), nullable=False, default="", server_default=""),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_tracker_runs_experiment_created", "experiment_id", "created_at"),
)

params = Table(
    "tracker_params",
    metadata,
    Column(
        "run_id", String(36), ForeignKey("tracker_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
    Index("ix_tracker_params_key_value", "key", "value"),
)

tags = Table(
    "tracker_tags",
    metadata,
    Column(
        "run_id", String(36), ForeignKey("tracker_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("key", String(250), primary_key=True),
    Column("value", Text, nullable=False),
)

# No foreign key on run_id: PostgreSQL would check it once per point, which doubles the cost
# of ingest. Each batch is written in one transaction with its tracker_latest_metrics upsert,
# whose foreign key checks the run once per batch (points/postgres.py), and a purge deletes the
# points.
metrics = Table(
    "tracker_metrics",
    metadata,
    Column("run_id", String(36), nullable=False),
    Column("key", String(250), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("timestamp", BigInteger, nullable=False),  # milliseconds since the epoch
    Index("ix_tracker_metrics_run_key_step", "run_id", "key", "step", "timestamp"),
)

# A key's points from one bulk batch: steps and timestamps as little-endian int64, values as
# float64, in arrival order; first/last_step bound the steps so a page reads only the blocks
# that reach it. No foreign key, as for tracker_metrics.
metric_blocks = Table(
    "tracker_metric_blocks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("key", String(250), nullable=False),
    Column("first_step", BigInteger, nullable=False),
    Column("last_step", BigInteger, nullable=False),
    Column("point_count", Integer, nullable=False),
    Column("steps", LargeBinary, nullable=False),
    Column("metric_values", LargeBinary, nullable=False),
    Column("timestamps", LargeBinary, nullable=False),
    Index("ix_tracker_metric_blocks_run_key_first", "run_id", "key", "first_step"),
)

# Per series, level and bucket (the steps with the same step >> level): how many points, and
# the first, last, lowest and highest of them (each its step, value and timestamp), kept up to
# date by every batch in the batch's own transaction. A downsampled read (M4) reads these rows
# instead of the points: see points/summaries.py. No foreign key, as for tracker_metrics.
_ROLES = ("first", "last", "min", "max")
metric_summaries = Table(
    "tracker_metric_summaries",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("key", String(250), primary_key=True),
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("bucket", BigInteger, primary_key=True, autoincrement=False),
    Column("point_count", BigInteger, nullable=False),
    *(
        Column(f"{role}_{part}", kind, nullable=False)
        for role in _ROLES
        for part, kind in (("step", BigInteger), ("value", Float), ("timestamp", BigInteger))
    ),
)

latest_metrics = Table(
    "tracker_latest_metrics",
    metadata,
    Column(
        "run_id", String(36), ForeignKey("tracker_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("key", String(250), primary_key=True),
    Column("step", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Index("ix_tracker_latest_key_value", "key", "value"),
)

artifacts = Table(
    "tracker_artifacts",
    metadata,
    Column(
        "run_id", String(36), ForeignKey("tracker_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("path", String(1000), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
