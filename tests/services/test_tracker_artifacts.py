"""The tracker's artifact uploads on PostgreSQL and SQLite, through its servicer as the service
builds it: the rules every upload shares (offsets, a required and verified sha256,
NEURAL_MAX_UPLOAD_BYTES, nothing half-written visible) and paths that no file system could
hold or that clash with a file or folder already there, each a caller's mistake."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from neural.v1 import common_pb2, tracker_pb2
from service_kit.auth import Principal
from service_kit.errors import ServiceError
from service_kit.interceptors import current_principal
from service_kit.settings import load

from services.tracker import app as tracker_app
from tests.services.conftest import redis_url

pytestmark = pytest.mark.integration

MAX_UPLOAD = 4096


class Tracker:
    def __init__(self, servicer: Any, run_id: str, storage: Path) -> None:
        self.servicer = servicer
        self.run_id = run_id
        self.storage = storage

    async def upload(
        self,
        path: str,
        data: bytes,
        sha256: str | None = None,
        piece: int = 1000,
        offsets: bool = True,
        total: int | None = None,
    ) -> Any:
        async def messages() -> AsyncIterator[tracker_pb2.ArtifactChunk]:
            offset = 0
            for i in range(0, max(len(data), 1), piece):
                chunk = common_pb2.Chunk(data=data[i : i + piece], offset=offset if offsets else 0)
                if i == 0:
                    chunk.total_size = len(data) if total is None else total
                yield tracker_pb2.ArtifactChunk(
                    run_id=self.run_id if i == 0 else "", path=path if i == 0 else "", chunk=chunk
                )
                offset += len(chunk.data)
            digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
            yield tracker_pb2.ArtifactChunk(chunk=common_pb2.Chunk(offset=offset, sha256=digest))

        return await self.servicer.UploadArtifact(messages(), None)

    async def listed(self, path: str = "") -> list[str]:
        found = await self.servicer.ListArtifacts(
            tracker_pb2.ListArtifactsRequest(run_id=self.run_id, path=path), None
        )
        return [a.path for a in found.artifacts]

    def files(self) -> list[str]:
        """Every file and folder under the run's storage, temporary files included."""
        base = self.storage / "tracker" / self.run_id
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.exists() else []


@pytest.fixture
async def tracker(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Tracker]:
    monkeypatch.setenv("NEURAL_DATABASE_URL", db_url)
    monkeypatch.setenv("NEURAL_REDIS_URL", redis_url(13))
    monkeypatch.setenv("NEURAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEURAL_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("NEURAL_MAX_UPLOAD_BYTES", str(MAX_UPLOAD))
    app = await tracker_app.build(load("tracker"))
    who = current_principal.set(Principal("alice", "user"))
    try:
        servicer = app.spec.servicers[0][1]
        exp = await servicer.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="e")), None
        )
        run = await servicer.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name="r")),
            None,
        )
        yield Tracker(servicer, run.id, tmp_path / "storage")
    finally:
        current_principal.reset(who)
        await app.close()


async def fails(call: Any) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await call
    assert info.value.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    return info.value


async def test_an_upload_follows_the_kit_rules(tracker: Tracker) -> None:
    data = b"w" * 3000
    art = await tracker.upload("model/weights.bin", data)
    assert (art.size_bytes, art.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert await tracker.upload("empty.txt", b"")  # an empty file is an artifact too

    cases = {
        "no sha256": (dict(sha256=""), grpc.StatusCode.INVALID_ARGUMENT, "chunk.sha256"),
        "wrong sha256": (dict(sha256="0" * 64), grpc.StatusCode.INVALID_ARGUMENT, "chunk.sha256"),
        "no offsets": (dict(offsets=False), grpc.StatusCode.INVALID_ARGUMENT, "chunk.offset"),
        "short": (dict(total=3001), grpc.StatusCode.INVALID_ARGUMENT, "chunk.total_size"),
    }
    for name, (options, code, field) in cases.items():
        err = await fails(tracker.upload("model/bad.bin", data, **options))
        assert err.code == code, name
        assert [v.field for v in err.violations] == [field], name  # type: ignore[attr-defined]
    declared = await fails(tracker.upload("model/big.bin", b"x" * (MAX_UPLOAD + 1)))
    assert declared.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    streamed = await fails(tracker.upload("model/big.bin", b"x" * (MAX_UPLOAD + 1), total=0))
    assert streamed.code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(MAX_UPLOAD) in str(
        streamed.message
    )
    # Nothing of the refused uploads is left, not even a temporary file.
    assert tracker.files() == ["empty.txt", "model", "model/weights.bin"]
    assert await tracker.listed("model") == ["model/weights.bin"]


async def test_a_file_and_a_folder_never_share_a_path(tracker: Tracker) -> None:
    await tracker.upload("f", b"a file")
    err = await fails(tracker.upload("f/x", b"under a file"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'f' is a file" in err.message
    err = await fails(tracker.upload("f/x/y", b"deeper under a file"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION

    await tracker.upload("d/x", b"in a folder")
    err = await fails(tracker.upload("d", b"over a folder"))
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "'d' is a directory" in err.message
    assert tracker.files() == ["d", "d/x", "f"]
    assert await tracker.listed() == ["d", "f"]


@pytest.mark.parametrize(
    "path",
    [
        "a" * 256,  # one byte over a file name's limit
        "ok/" + "b" * 300 + "/c",
        ".upload-abc",  # the name of an upload in progress
        "dir/.upload-x",
        "a" * 1001,
    ],
)
async def test_paths_no_file_system_could_hold_are_invalid(tracker: Tracker, path: str) -> None:
    err = await fails(tracker.upload(path, b"x"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.violations] == ["path"]  # type: ignore[attr-defined]
    for read in (
        tracker.servicer.ListArtifacts(
            tracker_pb2.ListArtifactsRequest(run_id=tracker.run_id, path=path), None
        ),
        tracker.servicer.DeleteArtifact(
            tracker_pb2.DeleteArtifactRequest(run_id=tracker.run_id, path=path), None
        ),
    ):
        assert (await fails(read)).code == grpc.StatusCode.INVALID_ARGUMENT
    assert tracker.files() == []


async def test_a_segment_of_255_bytes_is_fine(tracker: Tracker) -> None:
    name = "n" * 255
    await tracker.upload(f"dir/{name}", b"x")
    assert await tracker.listed("dir") == [f"dir/{name}"]
