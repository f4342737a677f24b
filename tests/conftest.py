"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def corpus_dir() -> Path:
    """The DSL compatibility corpus, kept in the repository (tests/dsl/corpus, see its README);
    NEURAL_DSL_CORPUS points the tests at another copy."""
    return Path(os.environ.get("NEURAL_DSL_CORPUS", ROOT / "tests" / "dsl" / "corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if not (path / "cases.jsonl").is_file():
        pytest.fail(f"DSL corpus not found at {path}; set NEURAL_DSL_CORPUS")
    return path


KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One kind per test: modules that start processes say `e2e`, tests on a real database
    (the `db_url` fixture) are `integration`, the rest `unit`."""
    for item in items:
        kinds = [k for k in KINDS if item.get_closest_marker(k)]
        if len(kinds) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {' and '.join(kinds)}: pick one")
        if kinds:
            continue
        item.add_marker("integration" if "db_url" in item.fixturenames else "unit")
