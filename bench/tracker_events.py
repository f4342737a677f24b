"""What WatchRun events cost one-point LogMetrics calls when nobody watches, in one run.

The tracker's servicer in this process (SQLite, the real Redis), called straight (no gRPC, so
the events' share is not diluted by the transport): single-point `LogMetrics` calls on many
runs, with the run events sent as before this change (every event encoded and published:
`EncodeAll`) and as now (one PUBSUB NUMSUB per flush, nothing encoded or sent for runs nobody
watches). Prints this process's CPU time per call for each, their ratio, and the share of the
events (queueing, encoding, publishing) in a cProfile of each; then the events alone (no
store), 20 one-point events per flush, CPU per event. Redis is NEURAL_REDIS_URL, else
127.0.0.1:6379 db 12.

    .venv/bin/python bench/tracker_events.py [--calls N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from neural.v1 import tracker_pb2  # noqa: E402
from service_kit import db  # noqa: E402
from service_kit.auth import Principal  # noqa: E402
from service_kit.interceptors import current_principal  # noqa: E402

from services.tracker import events as events_module  # noqa: E402
from services.tracker.app import MIGRATIONS, VERSION_TABLE  # noqa: E402
from services.tracker.artifacts import LocalArtifactStore  # noqa: E402
from services.tracker.events import RunEvents, channel  # noqa: E402
from services.tracker.service import TrackerService  # noqa: E402
from services.tracker.store import TrackerStore  # noqa: E402

EVENTS_FILE = events_module.__file__


class EncodeAll(RunEvents):
    """The flush as it was: every run's events encoded and published, watched or not."""

    async def _send(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, messages in batch.items():
                for message in messages:
                    pipe.publish(channel(run_id), json.dumps(message))
            await pipe.execute()
        return {}


async def calls(service: TrackerService, runs: list[str], n: int) -> float:
    """CPU seconds of `n` one-point LogMetrics calls over `runs`, flushes included."""
    requests = [
        tracker_pb2.LogMetricsRequest(
            run_id=runs[i % len(runs)],
            metrics=[tracker_pb2.Metric(key="loss", value=0.5, step=i)],
        )
        for i in range(n)
    ]
    t0 = time.process_time()
    for request in requests:
        await service.LogMetrics(request, None)
    if (flusher := service.events._flusher) is not None:  # the last events out
        await flusher
    return time.process_time() - t0


async def events_alone(kind: type[RunEvents], redis: Any, runs: list[str], n: int) -> float:
    """CPU seconds of `n` one-point events over `runs`, `per_window` at a time as one-point
    LogMetrics calls arrive at a busy server, flushes included: the events without the rest."""
    events = kind(redis)
    per_window = 20
    t0 = time.process_time()
    for i in range(0, n, per_window):
        for j in range(i, i + per_window):
            events.metrics(runs[j % len(runs)], [("loss", 0.5, j, 0)])
        if (flusher := events._flusher) is not None:
            await flusher
    return time.process_time() - t0


def events_share(profile: cProfile.Profile) -> float:
    """The share of the profile's time under the events' two entry points: queueing
    (`RunEvents.metrics`) and the flusher task (`_flush`, its sends and encoding)."""
    stats = pstats.Stats(profile)
    total = stats.total_tt  # type: ignore[attr-defined]
    inside = sum(
        cumulative
        for (path, _, name), (_, _, _, cumulative, _) in stats.stats.items()  # type: ignore[attr-defined]
        if path == EVENTS_FILE and name in {"_flush", "metrics"}
    )
    return inside / total if total else 0.0


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    redis_url = os.environ.get("NEURAL_REDIS_URL", "redis://127.0.0.1:6379/12")
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.make_engine(f"sqlite+aiosqlite:///{tmp}/bench.db")
        await db.prepare(engine, MIGRATIONS, VERSION_TABLE, True)
        store = TrackerStore(engine)
        service = TrackerService(store, LocalArtifactStore(Path(tmp) / "a", 1 << 20), redis_url)
        current_principal.set(Principal("bench", "user"))
        exp = await service.CreateExperiment(
            tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="b")), None
        )
        runs = [
            (
                await service.CreateRun(
                    tracker_pb2.CreateRunRequest(
                        experiment_id=exp.id, run=tracker_pb2.Run(name=f"r{i}")
                    ),
                    None,
                )
            ).id
            for i in range(args.runs)
        ]
        kinds = {"before (encode all)": EncodeAll, "now (NUMSUB first)": RunEvents}
        for kind in kinds.values():  # warm: connections, statements, code
            service.events = kind(service.events.redis)
            await calls(service, runs, 300)
        cpu: dict[str, list[float]] = {label: [] for label in kinds}
        share: dict[str, float] = {}
        for _ in range(3):  # interleaved, the best of three
            for label, kind in kinds.items():
                service.events = kind(service.events.redis)
                cpu[label].append(await calls(service, runs, args.calls))
        for label, kind in kinds.items():
            service.events = kind(service.events.redis)
            profile = cProfile.Profile()
            profile.enable()
            await calls(service, runs, args.calls // 2)
            profile.disable()
            share[label] = events_share(profile)
        alone: dict[str, list[float]] = {label: [] for label in kinds}
        for _ in range(3):
            for label, kind in kinds.items():
                alone[label].append(
                    await events_alone(kind, service.events.redis, runs, args.calls)
                )
        await engine.dispose()
    for label, times in alone.items():
        print(f"{label:22s} {min(times) / args.calls * 1e6:7.1f} us CPU per event, alone")
    per_call = {label: min(times) / args.calls * 1e6 for label, times in cpu.items()}
    for label in kinds:
        print(
            f"{label:22s} {per_call[label]:7.1f} us CPU per LogMetrics call, "
            f"events {share[label]:5.1%} of the profile"
        )
    before, now = (min(times) for times in alone.values())
    print(f"events alone, now / before: {now / before:.3f}")
    before, now = per_call.values()
    print(
        f"LogMetrics, now / before: {now / before:.3f} ({1 - now / before:.1%} less CPU per call)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
