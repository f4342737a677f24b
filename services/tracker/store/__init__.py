"""The tracker's storage, one part per aggregate, over one engine and one point store.

Owners: every experiment belongs to the identity that created it; `owner=None` means an
admin (sees everything). Another owner's experiment or run is NOT_FOUND, never revealed.
"""

from __future__ import annotations

from service_kit import db
from service_kit.keyed_reads import KeyedReads
from sqlalchemy.ext.asyncio import AsyncEngine

from ..points import for_url
from .artifact_records import ArtifactRecords
from .experiments import Experiments
from .history import History
from .metrics import Metrics
from .params_and_tags import Params, Tags
from .runs import Runs
from .search import RunSearch


class TrackerStore:
    """The parts: `experiments`, `runs`, `params`, `tags`, `metrics` (logging), `history`
    (reading series), `artifact_records` and `search`. They share the engine's sessions, the
    point store, and the cache of run owners (filled by the runs, emptied by a purge)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        sessions = db.sessions(engine)
        self.points = for_url(engine.url)
        owner_of: dict[str, str] = {}
        self.experiments = Experiments(sessions, owner_of)
        self.runs = Runs(sessions, self.experiments, owner_of, KeyedReads(engine))
        self.params = Params(sessions, self.runs)
        self.tags = Tags(sessions, self.runs)
        self.metrics = Metrics(self.points, self.runs)
        self.history = History(sessions, self.points, self.runs)
        self.artifact_records = ArtifactRecords(sessions)
        self.search = RunSearch(sessions)

    async def close(self) -> None:
        await self.points.close()
        await self.engine.dispose()
