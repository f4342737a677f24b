"""Limits against abuse: exceeding one is a diagnostic, never a hang or a crash."""

from __future__ import annotations

import pytest
from neural_dsl import DSLError, Limits, check, parse

from tests.dsl.helpers import net


def error_of(text: str, limits: Limits | None = None) -> str:
    with pytest.raises(DSLError) as info:
        check(text, limits)
    return info.value.first.message


def test_source_size() -> None:
    text = net("Flatten()") + "#" * 2000
    assert "over the limit of 1000" in error_of(text, Limits(max_source_bytes=1000))


def test_nesting_depth_of_brackets() -> None:
    deep = "Dense(" + "(" * 200 + "1" + ")" * 200 + ")"
    msg = error_of(net(deep))
    assert msg == "nesting deeper than 32 levels of brackets"


def test_very_deep_nesting_is_rejected_before_parsing() -> None:
    # 100k brackets would overflow a recursive tree walk; the pre-scan stops it first.
    deep = "Dense(" + "[" * 100_000 + "]" * 100_000 + ")"
    assert "nesting deeper" in error_of(net(deep))


def test_nested_blocks_count_as_nesting() -> None:
    blocks = "ResidualConnection { " * 40 + "Dense(2)" + " }" * 40
    assert "nesting deeper" in error_of(net(blocks, input_shape="(4)"))


def test_repetition_count() -> None:
    assert error_of(net("Dense(2) * 5000", "(4)")) == (
        "repetition count 5000 is over the limit of 1000"
    )


def test_macro_expansion_bomb_stops_at_the_layer_limit() -> None:
    text = (
        "define A {\n  Dense(2) * 1000\n}\n"
        "define B {\n  A * 1000\n}\n"
        "define C {\n  B * 1000\n}\n" + net("C", "(4)")
    )
    assert "expands to more than 10000 layers" in error_of(text)


def test_total_parameters() -> None:
    text = net("Dense(100000)\n    Dense(100000)", "(10)")
    assert "more than 1,000,000 parameters" in error_of(text, Limits(max_parameters=1_000_000))


def test_one_absurd_layer_is_rejected_without_an_input_shape() -> None:
    with pytest.raises(DSLError, match="would have at least"):
        parse(net("Conv2D(999999, (9999, 9999))"))


def test_huge_numbers_and_long_choices() -> None:
    assert "out of range" in error_of(net("Dense(1e999)"))
    choice = "HPO(choice(" + ", ".join(["8"] * 1001) + "))"
    assert "more than 1000 values" in error_of(net(f"Dense({choice})"))
