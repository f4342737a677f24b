"""tracker_metric_summaries: per series, level and bucket of steps, the points M4 downsampling
keeps (first, last, lowest, highest) and a count, so a downsampled read touches rows in
proportion to max_points rather than to the series (services/tracker/points/summaries.py).

Upgrade backfills the summaries of every existing series from its rows and blocks, one series
at a time (memory: one series' points), with the same code that summarizes a batch: a series'
stored points summarize as one batch. On PostgreSQL the table leaves room on each page, as
tracker_latest_metrics does (0004): every batch updates the rows of its newest buckets, and an
update that fits the same page leaves no index entry behind. Downgrade drops the table.

Revision ID: tracker_0005
Revises: tracker_0004
"""

import numpy as np
import sqlalchemy as sa
from alembic import op

from services.tracker.points.batches import Batch
from services.tracker.points.summaries import COLUMNS, ROLES, summarize

revision = "tracker_0005"
down_revision = "tracker_0004"
branch_labels = None
depends_on = None

TABLE = "tracker_metric_summaries"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("point_count", sa.BigInteger, nullable=False),
        *(
            sa.Column(f"{role}_{part}", kind, nullable=False)
            for role in ROLES
            for part, kind in (
                ("step", sa.BigInteger),
                ("value", sa.Float),
                ("timestamp", sa.BigInteger),
            )
        ),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(f"ALTER TABLE {TABLE} SET (fillfactor = 70)")
    _backfill(bind)


def _backfill(bind: sa.engine.Connection) -> None:
    table = sa.table(TABLE, *(sa.column(c) for c in ("run_id", *COLUMNS)))
    series = bind.execute(
        sa.text(
            "SELECT run_id, key FROM tracker_metrics UNION "
            "SELECT run_id, key FROM tracker_metric_blocks"
        )
    ).all()
    for run_id, key in series:
        where = {"r": run_id, "k": key}
        steps, values, stamps = [], [], []
        rows = bind.execute(
            sa.text(
                "SELECT step, value, timestamp FROM tracker_metrics WHERE run_id = :r AND key = :k"
            ),
            where,
        ).all()
        if rows:
            s, v, t = zip(*rows, strict=True)
            steps.append(np.array(s, "<i8"))
            values.append(np.array(v, "<f8"))
            stamps.append(np.array(t, "<i8"))
        for s, v, t in bind.execute(
            sa.text(
                "SELECT steps, metric_values, timestamps FROM tracker_metric_blocks "
                "WHERE run_id = :r AND key = :k ORDER BY id"
            ),
            where,
        ):
            steps.append(np.frombuffer(s, "<i8"))
            values.append(np.frombuffer(v, "<f8"))
            stamps.append(np.frombuffer(t, "<i8"))
        s, v, t = (np.concatenate(c) for c in (steps, values, stamps))
        columns = summarize(Batch([key] * len(s), s.tolist(), v.tolist(), t.tolist()))
        bind.execute(
            table.insert(),
            [
                dict(zip(("run_id", *COLUMNS), (run_id, *row), strict=True))
                for row in zip(*columns, strict=True)
            ],
        )


def downgrade() -> None:
    op.drop_table(TABLE)
