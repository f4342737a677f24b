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
