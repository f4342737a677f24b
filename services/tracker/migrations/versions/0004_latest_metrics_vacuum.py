"""tracker_latest_metrics: storage settings for a table that is updated far more than it grows.

Every LogMetrics batch moves its keys' latest point, so on PostgreSQL each batch leaves a dead
row version behind (and one in ix_tracker_latest_key_value, since `value` is indexed and the
update can never be HOT). A load run left 373,780 dead tuples for 259 live rows (28 MB): the
default autovacuum waits for 20% of the table to be dead, which on a table this small and this
hot means vacuuming rarely and late. Here it vacuums after a fixed 1,000 dead rows, without
the cost-based pauses (the table is tiny, so a vacuum is quick), and leaves 30% of each page
free so an update's new version usually lands on the same page. SQLite updates in place:
nothing to do there.

Revision ID: tracker_0004
Revises: tracker_0003
"""

from alembic import op

revision = "tracker_0004"
down_revision = "tracker_0003"
branch_labels = None
depends_on = None

SETTINGS = (
    "fillfactor = 70, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000, "
    "autovacuum_vacuum_cost_delay = 0"
)
NAMES = (
    "fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, "
    "autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tracker_latest_metrics SET ({SETTINGS})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE tracker_latest_metrics RESET ({NAMES})")
