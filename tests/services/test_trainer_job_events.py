"""What a watcher of a training or search job hears, from the job runner itself (real
training on digits, real PostgreSQL-or-SQLite and Redis; the tracker is an in-memory double):
one `progress` event per finished epoch with its 1-based epoch and that epoch's metrics, on
both frameworks; a search tells of each trial (numbered from 1), and `completed` carries the
best trial's metrics; every event has a message; HPO values are the values as written."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from neural_dsl import parse
from service_kit import db, job_messages
from service_kit.jobs import JobRecord, JobStore
from service_kit.settings import load

from services.trainer import search, tables
from services.trainer.dataset_store import DatasetStore
from services.trainer.plan import TrainingRequest
from services.trainer.runner import JobRunner, Resources
from tests.services.conftest import REDIS_URL
from tests.waiting import until_async

DIGITS = """
network Digits {
  input: (64,)
  layers:
    Dense(16, "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
  train { epochs: 3 batch_size: 64 validation_split: 0.2 }
}
"""
TUNED = """
network Tuned {
  input: (64,)
  layers:
    Dense(HPO(choice(8, 16)), "relu")
    Dropout(HPO(range(0.1, 0.3, step=0.1)))
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=0.01)
  train { epochs: 2 batch_size: 64 validation_split: 0.2 }
}
"""


class FakeTracker:
    """The tracker calls a job makes, kept in memory."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.runs: dict[str, dict[str, Any]] = {}

    async def experiment_id(self, name: str) -> str:
        return "exp-1"

    async def create_run(self, experiment_id: str, name: str, job_id: str, tags: dict) -> str:
        run_id = f"run-{next(self.ids)}"
        self.runs[run_id] = {"name": name, "tags": tags, "metrics": [], "params": {}}
        return run_id

    async def last_step(self, run_id: str, key: str) -> int:
        return len(self.runs[run_id]["metrics"])

    async def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self.runs[run_id]["params"].update(params)

    async def log_metrics(self, run_id: str, step: int, values: Mapping[str, float]) -> None:
        self.runs[run_id]["metrics"].append((step, dict(values)))

    async def set_status(self, run_id: str, status: int) -> None:
        self.runs[run_id]["status"] = status

    async def upload_all(self, run_id: str, files: Iterable[tuple[str, Path]]) -> list[str]:
        return [name for name, _ in files]

    async def close(self) -> None:
        pass


@pytest.fixture
async def resources(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Resources]:
    monkeypatch.setenv("NEURAL_DATABASE_URL", db_url)
    monkeypatch.setenv("NEURAL_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("NEURAL_STORAGE_DIR", str(tmp_path / "storage"))
    settings = load("trainer")
    engine = db.make_engine(db_url)
    async with engine.begin() as conn:
        await conn.run_sync(tables.metadata.create_all)
    res = Resources(
        settings,
        engine,
        JobStore(engine, tables.jobs, REDIS_URL),
        DatasetStore(engine, settings.storage_dir, 0),
    )
    tracker = FakeTracker()
    res.tracker = lambda owner: tracker  # type: ignore[method-assign]
    try:
        yield res
    finally:
        await res.close()


async def run_and_watch(
    res: Resources, req: TrainingRequest, kind: str, work: Any
) -> list[tuple[str, str, JobRecord]]:
    rec = await res.jobs.create(kind, "alice", req.to_json())
    events: list[tuple[str, str, JobRecord]] = []

    async def watch() -> None:
        async for event in res.jobs.watch(rec.id, None, poll_seconds=0.2):
            events.append(event)

    watcher = asyncio.create_task(watch())
    await until_async(lambda: events, 10, "the watch's first event")
    await JobRunner(res, rec.id, 4).run(work)
    await asyncio.wait_for(watcher, 30)
    return events


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
async def test_one_progress_event_per_finished_epoch_with_its_number_and_metrics(
    resources: Resources, backend: str
) -> None:
    req = TrainingRequest(source=DIGITS, backend=backend, dataset={"builtin": "digits"})
    events = await run_and_watch(resources, req, "training", JobRunner.train)
    assert all(message for _, message, _ in events), events
    assert [e for e, _, _ in events] == ["queued", "started", *["progress"] * 3, "completed"]
    progress = [
        (m, r.details["epoch"], r.details["epochs"]) for e, m, r in events if e == "progress"
    ]
    assert progress == [("epoch 1/3", 1, 3), ("epoch 2/3", 2, 3), ("epoch 3/3", 3, 3)]
    tracker: FakeTracker = resources.tracker("alice")  # type: ignore[assignment]
    (run,) = tracker.runs.values()
    logged = dict(run["metrics"])
    for _, _, rec in (e for e in events if e[0] == "progress"):
        assert rec.details["metrics"] == logged[rec.details["epoch"]]
    # each progress event has its own time (JobEvent.time), within the job's life, in order
    times = [rec.event_at for e, _, rec in events if e == "progress"]
    final = events[-1][2]
    assert None not in times and times == sorted(times), times
    assert final.started_at and final.ended_at
    assert final.started_at <= times[0] and times[-1] <= final.ended_at  # type: ignore[operator]
    assert job_messages.event(events[2][2], "progress").time.ToDatetime(dt.UTC) == times[0]


async def test_a_search_tells_of_each_trial_from_one_and_completes_with_the_best(
    resources: Resources,
) -> None:
    req = TrainingRequest(
        source=TUNED,
        backend="pytorch",
        dataset={"builtin": "digits"},
        n_trials=3,
        objective="val_accuracy",
    )
    events = await run_and_watch(resources, req, "search", search.run_search)
    assert all(message for _, message, _ in events), events
    assert [(e, m.rsplit(" ", 1)[0]) for e, m, _ in events if e == "progress"] == [
        ("progress", "trial 1/3"),
        ("progress", "trial 2/3"),
        ("progress", "trial 3/3"),
    ]
    per_trial = [r.details for e, _, r in events if e == "progress"]
    assert [d["trial"] for d in per_trial] == [1, 2, 3]
    last, message, final = events[-1]
    trials = final.details["trials"]
    assert last == "completed" and [t["number"] for t in trials] == [1, 2, 3]
    for details, trial in zip(per_trial, trials, strict=True):
        assert details["metrics"] == trial["metrics"]
    best = max(trials, key=lambda t: t["value"])
    assert final.details["best_trial"] == best["number"]
    assert final.details["metrics"] == best["metrics"]
    assert message == f"best: trial {best['number']}, runs/{best['run_id']}"
    tracker: FakeTracker = resources.tracker("alice")  # type: ignore[assignment]
    names = sorted(r["name"].split("-")[1] for r in tracker.runs.values())
    assert names == ["1", "2", "3"]
    assert sorted(r["tags"]["trial"] for r in tracker.runs.values()) == ["1", "2", "3"]
    for t in trials:
        assert t["values"]["layers.dropout_1.rate"] in (0.1, 0.2, 0.3)


def test_hpo_values_are_the_values_as_written() -> None:
    network = parse(TUNED.replace("choice(8, 16)", "range(8, 32, step=8)")).network
    spaces = {h.name: h for h in network.hpo_params()}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    dists = {name: search.distribution(h) for name, h in spaces.items()}
    seen: dict[str, set[Any]] = {name: set() for name in spaces}
    for _ in range(40):
        trial = study.ask(dists)
        for name, h in spaces.items():
            seen[name].add(search.value_of(h, trial.params[name]))
        study.tell(trial, 0.0)
    assert seen["layers.dense_1.units"] <= {8, 16, 24, 32}
    assert all(type(v) is int for v in seen["layers.dense_1.units"])
    assert seen["layers.dropout_1.rate"] == {0.1, 0.2, 0.3}
