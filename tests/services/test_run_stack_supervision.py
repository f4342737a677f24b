"""`make run`'s supervisor, one process at a time: an exit is restarted after a delay that
doubles up to a cap and falls back once the process has stayed up; stopping cancels restarts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT


def load_run_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_stack", ROOT / "scripts" / "run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_stack"] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


run_stack = load_run_stack()


def crashing(tmp_path: Path) -> object:
    return run_stack.Child(
        "crasher",
        [sys.executable, "-c", "raise SystemExit(3)"],
        run_stack.WORKER,
        dict(os.environ),
        tmp_path / "crasher.log",
    )


def test_an_exit_is_restarted_with_a_doubling_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    child = crashing(tmp_path)
    child.start()
    child.proc.wait(timeout=30)
    now = 1000.0
    delays = []
    for _ in range(8):
        child.check(now)  # notices the exit, schedules the restart
        delays.append(child.restart_at - now)
        child.check(child.restart_at - 0.01)  # not yet
        assert child.proc.poll() is not None and child.restart_at is not None
        now = child.restart_at
        child.check(now)  # starts it again
        assert child.restart_at is None
        child.proc.wait(timeout=30)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert child.restarts == 8
    assert "crasher exited with status 3; restarting in 1 s (restart 1" in caplog.text
    child.terminate()
    child.wait_stopped()


def test_a_process_that_stayed_up_restarts_quickly_again(tmp_path: Path) -> None:
    child = run_stack.Child(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(120)"],
        run_stack.SERVICE,
        dict(os.environ),
        tmp_path / "sleeper.log",
    )
    child.backoff = 32.0  # after several crashes
    child.start()
    try:
        child.check(child.started_at + run_stack.STABLE_S - 1)
        assert child.backoff == 32.0
        child.check(child.started_at + run_stack.STABLE_S)
        assert child.backoff == run_stack.FIRST_BACKOFF_S and child.restart_at is None
    finally:
        child.terminate()
        child.wait_stopped()
    assert child.proc.returncode == -15  # SIGTERM, then waited for


def test_stopping_cancels_a_pending_restart(tmp_path: Path) -> None:
    child = crashing(tmp_path)
    child.start()
    child.proc.wait(timeout=30)
    child.check(0.0)
    assert child.restart_at is not None
    child.terminate()
    child.wait_stopped()
    assert child.restart_at is None
