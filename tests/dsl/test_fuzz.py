"""Property-based tests: arbitrary text, and mutations of the corpus, give either an IR
or the library's own DSLError; never another exception and never a hang."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neural_dsl import DSLError, check

from tests.conftest import corpus_dir


def _corpus_texts() -> list[str]:
    folder = corpus_dir() / "examples"
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.neural"))]


SEEDS = _corpus_texts() if (corpus_dir() / "examples").is_dir() else ["network N {}"]
TOKENS = [
    "network",
    "define",
    "input",
    "layers",
    "loss",
    "optimizer",
    "train",
    "execution",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ";",
    "@",
    "*",
    "=",
    "HPO",
    "choice",
    "range",
    "log_range",
    "Dense",
    "Conv2D",
    "Dropout",
    "None",
    "true",
    '"relu"',
    "'x'",
    "-1",
    "0",
    "1e999",
    "3.5",
    "#",
    "\n",
    "\\",
    '"',
    "ResidualConnection",
    "TimeDistributed",
    "Flatten",
]


def accepts_or_dsl_error(text: str) -> None:
    try:
        check(text)
    except DSLError as exc:
        assert exc.diagnostics, "a DSLError always carries a diagnostic"
        for d in exc.diagnostics:
            assert d.line >= 1 and d.column >= 1


# CI runs the same examples every time (a failure there is reproducible); locally they vary.
FAST = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
)


@FAST
@given(st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    accepts_or_dsl_error(text)


@FAST
@given(st.lists(st.sampled_from(TOKENS), max_size=80).map(" ".join))
def test_token_soup(text: str) -> None:
    accepts_or_dsl_error(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(st.sampled_from([*TOKENS, draw(st.text(max_size=4))]))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@FAST
@given(mutated())
def test_mutated_corpus_programs(text: str) -> None:
    accepts_or_dsl_error(text)


def test_seeds_are_the_corpus() -> None:
    assert Path(corpus_dir() / "examples").is_dir() and len(SEEDS) == 18
