"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def corpus_dir() -> Path:
    """The DSL corpus: ../shared/dsl-corpus beside the repository (where CI lays it)."""
    return Path(os.environ.get("NEURAL_DSL_CORPUS", ROOT.parent / "shared" / "dsl-corpus"))


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = corpus_dir()
    if not (path / "cases.jsonl").is_file():
        pytest.fail(f"DSL corpus not found at {path}; set NEURAL_DSL_CORPUS")
    return path
