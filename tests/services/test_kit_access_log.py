"""service_kit.access_log: errors and slow calls always logged, fast successful calls sampled
by a counter, and a summary per method at the end of each window (a fake clock)."""

from __future__ import annotations

import logging
import os
from typing import Any

import grpc
import pytest
from service_kit.access_log import AccessLog
from service_kit.settings import SettingsError, load

OK = grpc.StatusCode.OK
GET = "/neural.v1.TrackerService/GetRun"
LOG = "/neural.v1.TrackerService/LogMetrics"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"msg": record.getMessage(), **getattr(record, "fields", {})})

    def of(self, msg: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["msg"] == msg]


@pytest.fixture
def lines() -> Lines:
    handler = Lines()
    logger = logging.getLogger("test.access")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def access(lines: Lines, **kwargs: Any) -> AccessLog:
    return AccessLog(logger=logging.getLogger("test.access"), **kwargs)


def test_fast_successful_calls_are_sampled_by_a_counter(lines: Lines) -> None:
    log = access(lines, slow_ms=500, sample=0.01, summary_s=0)
    for _ in range(1000):
        log.record(GET, OK, 0.002)
    for _ in range(50):
        log.record(LOG, OK, 0.002)
    rpc = lines.of("rpc")
    # every 100th of each method: GetRun's 100th, 200th, ...; none of LogMetrics' 50
    assert [r["method"] for r in rpc] == [GET] * 10
    assert all(r["sampled"] == 100 and r["code"] == "OK" for r in rpc)


def test_errors_and_slow_calls_are_always_logged(lines: Lines) -> None:
    log = access(lines, slow_ms=500, sample=0, summary_s=0)  # no sampled lines at all
    log.record(GET, OK, 0.499)
    log.record(GET, grpc.StatusCode.NOT_FOUND, 0.001)
    log.record(GET, OK, 0.5)
    log.record(LOG, grpc.StatusCode.INTERNAL, 2.0)
    assert [(r["method"], r["code"], r.get("slow", False)) for r in lines.of("rpc")] == [
        (GET, "NOT_FOUND", False),
        (GET, "OK", True),
        (LOG, "INTERNAL", True),
    ]
    assert "sampled" not in lines.of("rpc")[0]


def test_sample_one_logs_every_call(lines: Lines) -> None:
    log = access(lines, sample=1, summary_s=0)
    for _ in range(7):
        log.record(GET, OK, 0.001)
    assert len(lines.of("rpc")) == 7


def test_a_summary_per_method_at_the_end_of_each_window(lines: Lines) -> None:
    clock = Clock()
    log = access(lines, sample=0, summary_s=60, clock=clock)
    for ms in range(1, 101):  # 1 ms .. 100 ms
        log.record(GET, OK, ms / 1000)
    log.record(LOG, grpc.StatusCode.NOT_FOUND, 0.003)
    assert lines.of("rpc summary") == []  # the window is not over
    clock.now += 60
    log.record(LOG, OK, 0.004)  # the first call after the window writes its summary
    summary = {r["method"]: r for r in lines.of("rpc summary")}
    assert summary[GET] == {
        "msg": "rpc summary",
        "method": GET,
        "seconds": 60.0,
        "calls": 100,
        "errors": 0,
        "p50_ms": 51.0,
        "p99_ms": 100.0,
        "max_ms": 100.0,
    }
    assert (summary[LOG]["calls"], summary[LOG]["errors"]) == (2, 1)
    # the next window starts empty: a method without calls in it gets no line
    lines.records.clear()
    clock.now += 60
    log.record(LOG, OK, 0.001)
    assert [r["method"] for r in lines.of("rpc summary")] == [LOG]


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURAL_ACCESS_LOG_SAMPLE", "0.25")
    monkeypatch.setenv("NEURAL_SLOW_CALL_MS", "100")
    settings = load("tracker")
    assert (settings.access_log_sample, settings.slow_call_ms) == (0.25, 100)
    assert AccessLog(settings.slow_call_ms, settings.access_log_sample).every == 4
    monkeypatch.setenv("NEURAL_ACCESS_LOG_SAMPLE", "2")
    with pytest.raises(SettingsError, match="NEURAL_ACCESS_LOG_SAMPLE"):
        load("tracker")


def test_processes_default_to_the_available_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURAL_TRACKER_PROCESSES", raising=False)
    assert load("tracker", multiprocess=True).processes == len(os.sched_getaffinity(0))
    assert load("tracker").processes == 1  # a service that does not enable a group
    monkeypatch.setenv("NEURAL_TRACKER_PROCESSES", "3")
    assert load("tracker", multiprocess=True).processes == 3
    monkeypatch.setenv("NEURAL_TRACKER_PROCESSES", "0")
    with pytest.raises(SettingsError, match="NEURAL_TRACKER_PROCESSES"):
        load("tracker", multiprocess=True)
