"""Every List/Search RPC of every service, on PostgreSQL and SQLite: a forged, tampered, stale
or garbage page token is INVALID_ARGUMENT naming page_token and a negative page size
INVALID_ARGUMENT naming page_size, never a query that fails in the database; the tokens the
services issue page through everything once.

The servicers are built as the services build them (app.build) and called in process, as the
interceptor calls them, with a principal set."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from neural.v1 import common_pb2, compiler_pb2, tracker_pb2, trainer_pb2
from service_kit import pagination
from service_kit.auth import Principal
from service_kit.errors import InvalidArgument
from service_kit.interceptors import current_principal
from service_kit.settings import load

from services.compiler import app as compiler_app
from services.tracker import app as tracker_app
from services.trainer import app as trainer_app
from tests.services.conftest import redis_url

pytestmark = pytest.mark.integration

REDIS_DB = 13


@dataclass
class Services:
    compiler: Any
    trainer: Any
    tracker: Any
    run_id: str
    experiment_id: str


@pytest.fixture
async def services(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Services]:
    monkeypatch.setenv("NEURAL_DATABASE_URL", db_url)
    monkeypatch.setenv("NEURAL_REDIS_URL", redis_url(REDIS_DB))
    monkeypatch.setenv("NEURAL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("NEURAL_STORAGE_DIR", str(tmp_path / "storage"))
    apps = [
        await compiler_app.build(load("compiler")),
        await trainer_app.build(load("trainer")),
        await tracker_app.build(load("tracker")),
    ]
    who = current_principal.set(Principal("alice", "admin"))
    try:
        compiler, trainer, tracker = (a.spec.servicers[0][1] for a in apps)
        exp = await tracker.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="e")), None
        )
        run = await tracker.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name="r")),
            None,
        )
        yield Services(compiler, trainer, tracker, run.id, exp.id)
    finally:
        current_principal.reset(who)
        for a in apps:
            await a.close()


Call = Callable[[Services, str, int], Awaitable[Any]]

# Each List/Search RPC, called with a page token and a page size.
RPCS: dict[str, Call] = {
    "ListCompileJobs": lambda s, t, n: s.compiler.ListCompileJobs(
        common_pb2.ListJobsRequest(page_token=t, page_size=n), None
    ),
    "ListModels": lambda s, t, n: s.compiler.ListModels(
        compiler_pb2.ListModelsRequest(page_token=t, page_size=n), None
    ),
    "ListTrainingJobs": lambda s, t, n: s.trainer.ListTrainingJobs(
        common_pb2.ListJobsRequest(page_token=t, page_size=n), None
    ),
    "ListSearchJobs": lambda s, t, n: s.trainer.ListSearchJobs(
        common_pb2.ListJobsRequest(page_token=t, page_size=n), None
    ),
    "ListDatasets": lambda s, t, n: s.trainer.ListDatasets(
        trainer_pb2.ListDatasetsRequest(page_token=t, page_size=n), None
    ),
    "ListWorkers": lambda s, t, n: s.trainer.ListWorkers(
        trainer_pb2.ListWorkersRequest(page_token=t, page_size=n), None
    ),
    "ListExperiments": lambda s, t, n: s.tracker.ListExperiments(
        tracker_pb2.ListExperimentsRequest(page_token=t, page_size=n), None
    ),
    "SearchRuns": lambda s, t, n: s.tracker.SearchRuns(
        tracker_pb2.SearchRunsRequest(page_token=t, page_size=n), None
    ),
    "GetMetricHistory": lambda s, t, n: s.tracker.GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(run_id=s.run_id, key="loss", page_token=t, page_size=n),
        None,
    ),
    "GetMetricHistorySampled": lambda s, t, n: s.tracker.GetMetricHistory(
        tracker_pb2.GetMetricHistoryRequest(
            run_id=s.run_id, key="loss", max_points=3, page_token=t, page_size=n
        ),
        None,
    ),
    "ListArtifacts": lambda s, t, n: s.tracker.ListArtifacts(
        tracker_pb2.ListArtifactsRequest(run_id=s.run_id, page_token=t, page_size=n), None
    ),
}


def b64(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def forged() -> list[str]:
    """Tokens no service issued: garbage, the kit's old unsigned format (which once reached
    the database), and tokens signed with the public key (no secret is configured here, so a
    caller can sign them too) holding values of the wrong type or range."""
    listings = [
        "compiler_jobs",
        "compiler_models",
        "trainer_jobs",
        "trainer_datasets",
        "trainer_workers",
        "tracker_experiments",
        "tracker_search_runs",
        "tracker_metric_history",
        "tracker_artifacts",
    ]
    out = ["garbage!", "x" * 10_000, "a.b", "\0", "🙂.🙂"]
    out += [b64(["99999-01-01T00:00:00", "x"]), b64(["o", 10**30]), b64(["o", "x"]), b64([1, 2])]
    for listing in listings:
        for values in (
            ["9999-12-31T23:59:59-05:00", "id"],
            ["2026-01-01T00:00:00+00:00", 10**30],
            [10**30],
            [-5],
            ["x"],
            [None],
            ["step", 2**64, 0],
            ["sample", 0, 2**63],
        ):
            payload = json.dumps(
                [pagination.VERSION, listing, pagination._digest(()), *values]
            ).encode()
            out.append(f"{pagination._b64(payload)}.{pagination._b64(pagination._mac(payload))}")
    return out


async def refused(call: Awaitable[Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await call
    assert [v.field for v in info.value.violations] == [field], info.value.message


@pytest.mark.parametrize("rpc", sorted(RPCS))
async def test_forged_tokens_and_negative_sizes_are_invalid(services: Services, rpc: str) -> None:
    call = RPCS[rpc]
    await call(services, "", 0)  # the first page works
    for token in forged():
        await refused(call(services, token, 0), "page_token")
    await refused(call(services, "", -1), "page_size")


async def test_tokens_page_through_once_and_belong_to_their_listing(services: Services) -> None:
    tracker = services.tracker
    for name in ("a", "b", "c"):
        await tracker.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name=name)), None
        )
        await tracker.CreateRun(
            tracker_pb2.CreateRunRequest(
                experiment_id=services.experiment_id, run=tracker_pb2.Run(name=name)
            ),
            None,
        )
    await tracker.LogMetrics(
        tracker_pb2.LogMetricsRequest(
            run_id=services.run_id,
            metrics=[tracker_pb2.Metric(key="loss", value=i / 10, step=i) for i in range(10)],
        ),
        None,
    )
    for i in range(5):
        data = f"artifact {i}".encode()
        first = tracker_pb2.ArtifactChunk(
            run_id=services.run_id,
            path=f"f{i}.txt",
            chunk=common_pb2.Chunk(data=data, offset=0, total_size=len(data)),
        )
        last = tracker_pb2.ArtifactChunk(
            chunk=common_pb2.Chunk(offset=len(data), sha256=hashlib.sha256(data).hexdigest())
        )

        async def messages(
            items: list[tracker_pb2.ArtifactChunk],
        ) -> AsyncIterator[tracker_pb2.ArtifactChunk]:
            for item in items:
                yield item

        await tracker.UploadArtifact(messages([first, last]), None)

    async def everything(rpc: str, items: str, size: int = 2) -> list[Any]:
        seen, token = [], ""
        while True:
            page = await RPCS[rpc](services, token, size)
            seen += list(getattr(page, items))
            token = page.next_page_token
            if not token:
                return seen

    assert len(await everything("ListExperiments", "experiments")) == 4
    assert len(await everything("SearchRuns", "runs")) == 4
    assert len(await everything("ListArtifacts", "artifacts")) == 5
    assert [p.step for p in await everything("GetMetricHistory", "metrics", 3)] == list(range(10))
    # M4 in one bucket (max_points 3) of a rising series: its first and last point, a page each
    sampled = await everything("GetMetricHistorySampled", "metrics", 1)
    assert [(p.step, p.value) for p in sampled] == [(0, 0.0), (9, 0.9)]

    experiments = (await RPCS["ListExperiments"](services, "", 1)).next_page_token
    runs = (await RPCS["SearchRuns"](services, "", 1)).next_page_token
    await refused(RPCS["SearchRuns"](services, experiments, 1), "page_token")  # another listing
    await refused(RPCS["ListModels"](services, experiments, 1), "page_token")
    await refused(  # another order: an offset means nothing there
        tracker.SearchRuns(
            tracker_pb2.SearchRunsRequest(page_token=runs, page_size=1, order_by=["run_name"]),
            None,
        ),
        "page_token",
    )
    history = (await RPCS["GetMetricHistory"](services, "", 3)).next_page_token
    await refused(RPCS["GetMetricHistorySampled"](services, history, 3), "page_token")
    for kind in ("training", "training", "search", "search"):
        await services.trainer.jobs.create(kind, "alice", {})
    training = (await RPCS["ListTrainingJobs"](services, "", 1)).next_page_token
    assert len(await everything("ListTrainingJobs", "jobs", 1)) == 2
    await refused(RPCS["ListSearchJobs"](services, training, 1), "page_token")  # one table
    body, mac = runs.split(".")
    tampered = f"{body}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    await refused(RPCS["SearchRuns"](services, tampered, 1), "page_token")
