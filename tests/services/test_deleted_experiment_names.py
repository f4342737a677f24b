"""A soft-deleted experiment keeps its name until purged (as in MLflow), and a training into
that name restores it: deleting `Default` does not break every training. On PostgreSQL and
SQLite, through a real tracker server in process and the trainer's tracker client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from neural.v1 import tracker_pb2, tracker_pb2_grpc
from service_kit.server import interceptor
from service_kit.settings import load

from services.tracker import app as tracker_app
from services.trainer.tracker_client import TrackerClient
from tests import tokens
from tests.services.conftest import redis_url

pytestmark = pytest.mark.integration


class SignedTokens:
    """Tokens as the authz service would issue them to a worker (tests/tokens.py's key)."""

    async def metadata(self, subject: str, role: str = "user") -> tuple[tuple[str, str], ...]:
        return tokens.as_(subject, role)


@pytest.fixture
async def tracker(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[tracker_app.App, str]]:
    monkeypatch.setenv("NEURAL_DATABASE_URL", db_url)
    monkeypatch.setenv("NEURAL_REDIS_URL", redis_url(4))
    monkeypatch.setenv("NEURAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEURAL_AUTHZ_PUBLIC_KEY_FILE", tokens.public_key_file())
    settings = load("tracker")
    app = await tracker_app.build(settings)
    spec = app.spec
    server = grpc.aio.server(interceptors=[interceptor(spec, settings)])
    for add, servicer, _ in spec.servicers:
        add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield app, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
        await app.close()


async def test_training_into_a_deleted_experiments_name_restores_it(
    tracker: tuple[tracker_app.App, str],
) -> None:
    app, address = tracker
    client = TrackerClient(address, SignedTokens(), "alice")
    try:
        default = await client.experiment_id("Default")
        await client.create_run(default, "first", "job-1", {})
        await app.store.experiments.set_deleted(default, "alice", True)

        # the next training lands in the same experiment, restored with its runs
        assert await client.experiment_id("Default") == default
        assert (await app.store.experiments.get(default, "alice")).deleted_at is None
        await client.create_run(default, "second", "job-2", {})

        # creating the name by hand says what holds it and how to free it
        await app.store.experiments.set_deleted(default, "alice", True)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.stub.CreateExperiment(
                tracker_pb2.CreateExperimentRequest(
                    experiment=tracker_pb2.Experiment(name="Default")
                ),
                metadata=tokens.as_("alice", "user"),
            )
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert f"deleted experiment {default}" in (info.value.details() or "")
        assert "PurgeExperiment" in (info.value.details() or "")

        # purged, the name is free: a training starts a new experiment
        await app.store.experiments.purge(default, "alice")
        fresh = await client.experiment_id("Default")
        assert fresh != default
        # another owner's deleted experiment of that name is not alice's to restore
        bob = TrackerClient(address, SignedTokens(), "bob")
        try:
            bobs = await bob.experiment_id("Default")
            assert bobs != fresh
        finally:
            await bob.close()
        stub = tracker_pb2_grpc.TrackerServiceStub(client.channel)
        listed = await stub.ListExperiments(
            tracker_pb2.ListExperimentsRequest(name="Default"), metadata=tokens.as_("alice", "user")
        )
        assert [e.id for e in listed.experiments] == [fresh]
    finally:
        await client.close()
