"""Metric points straight on the database driver: the tracker's two hot paths.

Logging a batch and reading a page of a series are most of the tracker's traffic, and through
SQLAlchemy each cost more in Python than in the database. Here a batch is one statement (one
trip to a writer thread on SQLite) and a page comes back as numpy columns. Everything else in
the tracker goes through SQLAlchemy.

Points are stored in two forms. A key's points that arrive in bulk (BLOCK_FROM or more in
one batch) become one row of tracker_metric_blocks, its steps, values and timestamps packed
as little-endian arrays: one row to write instead of a thousand, each with its index entry,
which was most of the database's time per batch. A trickle (a point per epoch, say) stays a
row per point in tracker_metrics, where it costs nothing to append. A read merges the two by
(step, timestamp), loading only the blocks whose step range can reach the page.

A third form serves downsampled reads: per series, rows of tracker_metric_summaries hold, for
each bucket of 2**L steps at a few levels L, the count and the first, last, lowest and highest
point, merged into by every batch in its own statement or transaction. A read of max_points
(M4: each of at most max_points / 4 buckets keeps those four points) merges a level's rows or,
for a series spanning few steps, reads its points: work in proportion to max_points however
long the series is.

The modules: `columns` (a series as numpy columns), `batches` (the write side both databases
share: the newest point per key, the split into rows and packed blocks), `summaries` (a
batch's summary rows and the upsert that merges them), `pages` (the read side: which blocks a
page loads, the merge, the read statements), `downsample` (M4 from points or summaries),
`backend` (what a point store does), then one store per database, `postgres` and `sqlite`.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

from .backend import PointStore
from .postgres import PostgresPoints
from .sqlite import SqlitePoints


def for_url(url: URL) -> PointStore:
    """The point store of the tracker's database."""
    if url.get_backend_name() == "postgresql":
        return PostgresPoints(url)
    return SqlitePoints(url)
