"""The records of a run's artifacts (path, size, sha256); the files themselves are the
artifact store's (services/tracker/artifacts.py)."""

from __future__ import annotations

from service_kit import db
from service_kit.errors import NotFound
from sqlalchemy import and_, delete, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..tables import artifacts
from .common import now


class ArtifactRecords:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def record(self, run_id: str, path: str, size: int, digest: str) -> None:
        try:
            async with db.transaction(self.sessions) as s:
                await s.execute(
                    delete(artifacts).where(
                        and_(artifacts.c.run_id == run_id, artifacts.c.path == path)
                    )
                )
                await s.execute(
                    insert(artifacts).values(
                        run_id=run_id, path=path, size=size, sha256=digest, created_at=now()
                    )
                )
        except IntegrityError:  # the run was purged while its artifact was uploaded
            raise NotFound(f"no run {run_id[:100]!r}") from None

    async def hashes(self, run_id: str) -> dict[str, str]:
        """path -> sha256 of each of the run's files."""
        async with self.sessions() as s:
            return {
                r.path: r.sha256
                for r in await s.execute(select(artifacts).where(artifacts.c.run_id == run_id))
            }

    async def forget(self, run_id: str, path: str) -> None:
        """Drop the records of a file, or of everything under a directory."""
        async with db.transaction(self.sessions) as s:
            await s.execute(
                delete(artifacts).where(
                    and_(
                        artifacts.c.run_id == run_id,
                        or_(
                            artifacts.c.path == path,
                            artifacts.c.path.startswith(path + "/", autoescape=True),
                        ),
                    )
                )
            )
