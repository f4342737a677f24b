"""The worker's side of the tracker: each job is a tracker run, reached over gRPC only.

The worker acts for the job's owner with internal tokens the authz service issues to it
(`service_kit.delegation`), so the run lands in the owner's experiment and nowhere else.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Protocol

import grpc
from neural.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

CHUNK = 256 * 1024
FINISHED, FAILED, KILLED = (
    tracker_pb2.RUN_STATUS_FINISHED,
    tracker_pb2.RUN_STATUS_FAILED,
    tracker_pb2.RUN_STATUS_KILLED,
)


class TokenSource(Protocol):
    """Call metadata naming a subject (OwnerTokens: tokens the authz service issues)."""

    async def metadata(self, subject: str, role: str = "user") -> tuple[tuple[str, str], ...]: ...


class TrackerClient:
    """The few tracker calls a training job makes, with the owner's identity."""

    def __init__(
        self, address: str, tokens: TokenSource | None, owner: str, timeout: float = 30.0
    ) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = tracker_pb2_grpc.TrackerServiceStub(self.channel)
        self.tokens = tokens
        self.owner = owner
        self.timeout = timeout

    async def _meta(self) -> tuple[tuple[str, str], ...]:
        # Asked for at each call: a job outlives any one token. None: auth is disabled.
        return await self.tokens.metadata(self.owner) if self.tokens is not None else ()

    async def close(self) -> None:
        await self.channel.close()

    async def experiment_id(self, name: str) -> str:
        """The owner's experiment of that name, created when missing. A deleted experiment
        keeps its name until purged (as in MLflow), so training into that name restores it:
        a training never fails because its experiment was deleted, and nothing is lost."""
        try:
            exp = await self.stub.CreateExperiment(
                tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=name)),
                metadata=await self._meta(),
                timeout=self.timeout,
            )
            return exp.id
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        token = ""
        while True:  # the name filter matches substrings: find the exact one
            page = await self.stub.ListExperiments(
                tracker_pb2.ListExperimentsRequest(
                    name=name, page_size=1000, page_token=token, include_deleted=True
                ),
                metadata=await self._meta(),
                timeout=self.timeout,
            )
            for exp in page.experiments:
                if exp.name != name:
                    continue
                if exp.HasField("delete_time"):
                    await self.stub.RestoreExperiment(
                        tracker_pb2.RestoreExperimentRequest(id=exp.id),
                        metadata=await self._meta(),
                        timeout=self.timeout,
                    )
                return exp.id
            token = page.next_page_token
            if not token:
                raise RuntimeError(f"experiment {name!r} exists but cannot be found")

    async def create_run(
        self, experiment_id: str, name: str, job_id: str, tags: Mapping[str, str]
    ) -> str:
        run = await self.stub.CreateRun(
            tracker_pb2.CreateRunRequest(
                experiment_id=experiment_id,
                run=tracker_pb2.Run(name=name, job_id=job_id, tags=dict(tags)),
            ),
            metadata=await self._meta(),
            timeout=self.timeout,
        )
        return run.id

    async def last_step(self, run_id: str, key: str) -> int:
        """The newest step logged for `key` (0 when none): a resumed job logs only later ones."""
        run = await self.stub.GetRun(
            tracker_pb2.GetRunRequest(id=run_id), metadata=await self._meta(), timeout=self.timeout
        )
        return max((m.step for m in run.latest_metrics if m.key == key), default=0)

    async def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        await self.stub.LogParams(
            tracker_pb2.LogParamsRequest(run_id=run_id, params=dict(params)),
            metadata=await self._meta(),
            timeout=self.timeout,
        )

    async def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        metrics = []
        for key, value in values.items():
            m = tracker_pb2.Metric(key=key, value=float(value), step=step)
            m.timestamp.FromMilliseconds(now_ms)
            metrics.append(m)
        await self.stub.LogMetrics(
            tracker_pb2.LogMetricsRequest(run_id=run_id, metrics=metrics),
            metadata=await self._meta(),
            timeout=self.timeout,
        )

    async def set_status(self, run_id: str, status: int) -> None:
        run = tracker_pb2.Run(id=run_id, status=status)
        run.end_time.GetCurrentTime()
        await self.stub.UpdateRun(
            tracker_pb2.UpdateRunRequest(run=run, update_mask={"paths": ["status", "end_time"]}),
            metadata=await self._meta(),
            timeout=self.timeout,
        )

    async def upload(self, run_id: str, path: str, file: Path) -> None:
        async def chunks() -> AsyncIterator[tracker_pb2.ArtifactChunk]:
            digest = hashlib.sha256()
            size = file.stat().st_size
            offset = 0
            with file.open("rb") as f:
                while data := f.read(CHUNK):
                    digest.update(data)
                    first = offset == 0
                    yield tracker_pb2.ArtifactChunk(
                        run_id=run_id if first else "",
                        path=path if first else "",
                        chunk=common_pb2.Chunk(
                            data=data, offset=offset, total_size=size if first else 0
                        ),
                    )
                    offset += len(data)
            if offset == 0:
                yield tracker_pb2.ArtifactChunk(run_id=run_id, path=path, chunk=common_pb2.Chunk())
            yield tracker_pb2.ArtifactChunk(
                chunk=common_pb2.Chunk(offset=offset, sha256=digest.hexdigest())
            )

        await self.stub.UploadArtifact(
            chunks(), metadata=await self._meta(), timeout=self.timeout * 4
        )

    async def upload_all(self, run_id: str, files: Iterable[tuple[str, Path]]) -> list[str]:
        names = []
        for name, path in files:
            await self.upload(run_id, name, path)
            names.append(name)
        return names
