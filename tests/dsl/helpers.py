"""Small builders for DSL test programs."""

from __future__ import annotations

from neural_dsl import DSLError, check, parse


def net(layers: str, input_shape: str = "(28, 28, 1)", extra: str = "") -> str:
    return f"network T {{\n  input: {input_shape}\n  layers:\n    {layers}\n  {extra}\n}}\n"


def first_error(text: str, *, shapes: bool = False) -> DSLError:
    try:
        check(text) if shapes else parse(text)
    except DSLError as exc:
        return exc
    raise AssertionError("expected a DSLError")
