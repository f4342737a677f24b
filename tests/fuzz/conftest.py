"""Prints the RPC fuzz test's figures at the end of the run (RPCs covered, examples run,
INTERNAL count), whether it passed or not."""

from __future__ import annotations

from typing import Any

from tests.fuzz.figures import RECORDED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RECORDED:
        terminalreporter.section("rpc fuzz")
        for figures in RECORDED:
            terminalreporter.write_line(figures.line())
