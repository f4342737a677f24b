"""The tracker as two processes on one port (NEURAL_TRACKER_PROCESSES=2), on real PostgreSQL
and Redis: concurrent writers and readers spread over both processes lose and duplicate no
acknowledged point, the database sees no more sessions than the two pools hold, SIGTERM to the
parent stops the group cleanly, and a child killed outright stops the group with status 1
(service_kit.process_group: the supervisor above restarts it)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from neural.v1 import tracker_pb2, tracker_pb2_grpc
from service_kit import db

from tests.services.conftest import PG_HOST, PG_USER
from tests.services.stack import Stack, pg_stack
from tests.waiting import until

REDIS_DB = 4
ENV = {
    "NEURAL_TRACKER_PROCESSES": "2",
    "NEURAL_ACCESS_LOG_SAMPLE": "1",  # every call logged, with the pid that served it
}
WRITERS_PER_PROCESS = 2
BATCHES = 25
POINTS = 20


def log_lines(stack: Stack) -> list[dict[str, Any]]:
    out = []
    for line in (stack.logs / "server.log").read_text(errors="replace").splitlines():
        try:  # the processes share the file: a line being written may be cut
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def children(stack: Stack) -> list[int]:
    """The group's server processes, from the parent's log."""
    started = [e for e in log_lines(stack) if e["msg"] == "serving as a process group"]
    return started[-1]["processes"] if started else []


def alive(pid: int) -> bool:
    """Running: a zombie (ended, its parent gone and not yet reaped) is not."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def served_by(stack: Stack, request_id: str) -> int | None:
    for entry in log_lines(stack):
        if entry.get("request_id") == request_id and entry["msg"] == "rpc":
            return int(entry["pid"])
    return None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with pg_stack(tmp_path, REDIS_DB, "tracker", env=ENV, keys={"user": ("alice", "user")}) as s:
        until(lambda: len(children(s)) == 2, what="the group's two processes")
        yield s


def connections_per_process(stack: Stack, run_id: str, each: int) -> dict[int, list[Any]]:
    """Stubs on connections of their own, `each` served by each process (found by the pid
    that logged a probe call's request id)."""
    by_pid: dict[int, list[Any]] = defaultdict(list)
    for n in range(200):
        if len(by_pid) == 2 and all(len(v) >= each for v in by_pid.values()):
            break
        ch = grpc.insecure_channel(stack.address, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = tracker_pb2_grpc.TrackerServiceStub(ch)
        rid = f"probe-{n}-{os.getpid()}"
        stub.GetRun(
            tracker_pb2.GetRunRequest(id=run_id),
            metadata=(*stack.meta("user"), ("x-request-id", rid)),
        )
        pid = until(lambda rid=rid: served_by(stack, rid), what="the probe's log line")
        by_pid[pid].append(stub)
    assert sorted(by_pid) == sorted(children(stack))
    return by_pid


def tracker_sessions(stack: Stack) -> set[tuple[int, Any]]:
    database = stack.env["NEURAL_DATABASE_URL"].rsplit("/", 1)[-1]

    async def read() -> set[tuple[int, Any]]:
        conn = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres")
        try:
            rows = await conn.fetch(
                "SELECT pid, backend_start FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = 'neural-tracker'",
                database,
            )
        finally:
            await conn.close()
        return {(r["pid"], r["backend_start"]) for r in rows}

    return asyncio.run(read())


def test_writers_and_readers_over_two_processes(stack: Stack) -> None:
    meta = stack.meta("user")
    setup = tracker_pb2_grpc.TrackerServiceStub(grpc.insecure_channel(stack.address))
    exp = setup.CreateExperiment(
        tracker_pb2.CreateExperimentRequest(experiment=tracker_pb2.Experiment(name="group")),
        metadata=meta,
    )
    runs = [
        setup.CreateRun(
            tracker_pb2.CreateRunRequest(experiment_id=exp.id, run=tracker_pb2.Run(name=f"r{i}")),
            metadata=meta,
        ).id
        for i in range(3)
    ]
    stubs = connections_per_process(stack, runs[0], WRITERS_PER_PROCESS + 1)
    writers = [s for v in stubs.values() for s in v[:WRITERS_PER_PROCESS]]
    readers = [v[WRITERS_PER_PROCESS] for v in stubs.values()]
    acked: dict[tuple[str, str], list[int]] = defaultdict(list)  # (run, key) -> steps
    failures: list[BaseException] = []
    done = threading.Event()
    lock = threading.Lock()

    def write(w: int, stub: Any) -> None:
        try:
            for b in range(BATCHES):
                run_id, key = runs[(w + b) % len(runs)], f"w{w}"
                steps = [b * POINTS + i for i in range(POINTS)]
                batch = [tracker_pb2.Metric(key=key, value=s / 7, step=s) for s in steps]
                stub.LogMetrics(
                    tracker_pb2.LogMetricsRequest(run_id=run_id, metrics=batch), metadata=meta
                )
                with lock:
                    acked[(run_id, key)].extend(steps)
        except BaseException as exc:
            failures.append(exc)

    def read(stub: Any) -> None:
        try:
            n = 0
            while not done.is_set():
                run_id = runs[n % len(runs)]
                stub.GetRun(tracker_pb2.GetRunRequest(id=run_id), metadata=meta)
                stub.SearchRuns(
                    tracker_pb2.SearchRunsRequest(experiment_ids=[exp.id]), metadata=meta
                )
                n += 1
        except BaseException as exc:
            failures.append(exc)

    sessions: set[tuple[int, Any]] = set()

    def watch_sessions() -> None:
        while not done.is_set():
            sessions.update(tracker_sessions(stack))

    threads = [threading.Thread(target=write, args=(w, s)) for w, s in enumerate(writers)]
    others = [threading.Thread(target=read, args=(s,)) for s in readers]
    others.append(threading.Thread(target=watch_sessions))
    for t in threads + others:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for t in others:
        t.join()
    assert not failures, failures

    for (run_id, key), steps in acked.items():
        stored: list[int] = []
        token = ""
        while True:
            page = setup.GetMetricHistory(
                tracker_pb2.GetMetricHistoryRequest(
                    run_id=run_id, key=key, page_size=10_000, page_token=token
                ),
                metadata=meta,
            )
            stored += [m.step for m in page.metrics]
            token = page.next_page_token
            if not token:
                break
        assert sorted(stored) == sorted(steps)  # every acknowledged point, exactly once
    assert sum(len(s) for s in acked.values()) == len(writers) * BATCHES * POINTS

    # Both processes served writes (each writer's connection was pinned to one of them).
    wrote = {e["pid"] for e in log_lines(stack) if e.get("method", "").endswith("/LogMetrics")}
    assert wrote == set(children(stack))
    # One /metrics for the group (the parent's): both processes' calls, summed.
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10)
        .read()
        .decode()
    )
    logged = 'neural_grpc_requests_total{code="OK",method="LogMetrics",service="tracker"}'
    count = next(line.split()[-1] for line in text.splitlines() if line.startswith(logged))
    assert float(count) == len(writers) * BATCHES
    # The two pools' sessions, never more: no overflow connection opened and closed per call.
    assert 0 < len(sessions) <= 2 * db.POOL_SIZE

    # SIGTERM to the parent: the children drain and stop, the parent exits 0.
    pids = children(stack)
    assert stack.stop("server") == 0
    assert not [p for p in pids if alive(p)]
    assert {e["pid"] for e in log_lines(stack) if e["msg"] == "stopped"} == set(pids)


def test_a_killed_child_stops_the_group(stack: Stack) -> None:
    parent = stack.procs["server"]
    first, second = children(stack)
    os.kill(first, signal.SIGKILL)
    until(lambda: parent.poll() is not None, what="the parent's exit")
    assert parent.returncode == 1  # a failure, for the supervisor above to restart
    assert not alive(second)
    exited = [
        e for e in log_lines(stack) if e["msg"] == "a server process exited: stopping the group"
    ]
    assert exited[0]["child"] == first and exited[0]["status"] == -signal.SIGKILL
    assert any(e["msg"] == "stopped" and e["pid"] == second for e in log_lines(stack))
    stack.procs.pop("server")


def test_children_stop_when_the_parent_is_killed(stack: Stack) -> None:
    # SIGKILL leaves the parent no time to stop its children: the kernel tells them
    # (PR_SET_PDEATHSIG), and they drain and stop rather than hold the port.
    pids = children(stack)
    parent = stack.procs.pop("server")
    parent.kill()
    parent.wait()
    until(lambda: not any(alive(p) for p in pids), what="the children's exit")
    stopped = {e["pid"] for e in log_lines(stack) if e["msg"] == "stopped"}
    assert stopped == set(pids)
