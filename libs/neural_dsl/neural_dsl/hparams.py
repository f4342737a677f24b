"""Fixing the values of `HPO(...)` parameters: a network with a search space -> a concrete one.

Code generation and training need concrete values. `resolve` substitutes the values a
caller chose (by the HPO's stable name, e.g. `layers.dense_1.units`) and checks each one
lies in its space; a missing or unknown name, or a value outside its space, is a
diagnostic at the HPO's location.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from .diagnostics import Collector
from .ir import HPO, Choice, Layer, LogRange, Network, Optimizer, Param, Range, Schedule, Value


def in_space(value: Any, space: Choice | Range | LogRange) -> bool:
    if isinstance(space, Choice):
        return any(
            in_space(value, c.space) if isinstance(c, HPO) else _equal(value, c)
            for c in space.values
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(space, LogRange):
        return space.low <= value <= space.high
    if not space.start <= value <= space.end:
        return False
    if space.step is None:
        return True
    steps = (value - space.start) / space.step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


def space_text(space: Choice | Range | LogRange) -> str:
    """A search space as the DSL writes it: `choice(16, 32)`, `range(0.1, 0.5, step=0.1)`."""
    if isinstance(space, Choice):
        return f"choice({', '.join(_value_text(v) for v in space.values)})"
    if isinstance(space, LogRange):
        return f"log_range({space.low!r}, {space.high!r})"
    step = "" if space.step is None else f", step={space.step!r}"
    return f"range({space.start!r}, {space.end!r}{step})"


def _value_text(v: Value) -> str:
    if isinstance(v, HPO):
        return space_text(v.space)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, tuple):
        return f"({', '.join(_value_text(x) for x in v)}{',' if len(v) == 1 else ''})"
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        a = tuple(a)
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def first_values(network: Network) -> dict[str, Any]:
    """A concrete value for every HPO: the first choice, the range start, the low bound."""
    values: dict[str, Any] = {}
    for h in network.hpo_params():
        space = h.space
        while isinstance(space, Choice) and isinstance(space.values[0], HPO):
            space = space.values[0].space
        if isinstance(space, Choice):
            values[h.name] = space.values[0]
        elif isinstance(space, Range):
            values[h.name] = space.start
        else:
            values[h.name] = space.low
    return values


def resolve(network: Network, values: Mapping[str, Any]) -> tuple[Network, Collector]:
    """Replace every HPO by its value from `values`. Errors are collected, not raised."""
    out = Collector("semantic")
    wanted = {h.name: h for h in network.hpo_params()}
    for name in values:
        if name not in wanted:
            known = ", ".join(wanted) or "none"
            out.error(f"unknown hyperparameter '{name}' (this network has: {known})", network.loc)
    missing = [h for n, h in wanted.items() if n not in values]
    for h in missing:
        # callers differ (a CLI flag, a request field): the message names neither
        out.error(
            f"no value for hyperparameter '{h.name}': give one in hparams under this name, "
            f"from its search space {space_text(h.space)}",
            h.loc,
        )

    def fix(v: Value) -> Value:
        if isinstance(v, HPO):
            if v.name not in values:
                return v
            chosen = values[v.name]
            if not in_space(chosen, v.space):
                out.error(
                    f"value {chosen!r} for '{v.name}' is outside its search space "
                    f"{space_text(v.space)}",
                    v.loc,
                )
                return v
            if isinstance(chosen, list):
                chosen = tuple(chosen)
            if isinstance(chosen, float) and chosen.is_integer() and _int_space(v.space):
                chosen = int(chosen)
            return chosen
        if isinstance(v, Schedule):
            return replace(v, params=tuple(replace(p, value=fix(p.value)) for p in v.params))
        if isinstance(v, tuple):
            return tuple(fix(x) for x in v)
        return v

    def fix_params(params: tuple[Param, ...]) -> tuple[Param, ...]:
        return tuple(replace(p, value=fix(p.value)) for p in params)

    def fix_layer(layer: Layer) -> Layer:
        return replace(
            layer,
            params=fix_params(layer.params),
            sublayers=tuple(fix_layer(s) for s in layer.sublayers),
            wrapped=fix_layer(layer.wrapped) if layer.wrapped else None,
        )

    t = network.training
    optimizer: Optimizer | None = network.optimizer
    resolved = replace(
        network,
        layers=tuple(fix_layer(layer) for layer in network.layers),
        optimizer=replace(optimizer, params=fix_params(optimizer.params)) if optimizer else None,
        training=replace(
            t,
            epochs=fix(t.epochs),
            batch_size=fix(t.batch_size),
            validation_split=fix(t.validation_split),
        ),
    )
    return resolved, out


def _int_space(space: Choice | Range | LogRange) -> bool:
    if isinstance(space, Range):
        return all(isinstance(b, int) for b in (space.start, space.end, space.step or 1))
    if isinstance(space, Choice):
        return all(isinstance(v, int) and not isinstance(v, bool) for v in space.values)
    return False
