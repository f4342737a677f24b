"""Values: a RawValue becomes an IR value (literals, tuples, `HPO(...)` search spaces), and
the shared state and wording of one analysis (its context, the marker of a value already
reported as invalid, how a value is described in a message, close-name suggestions)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Collector
from ..ir import HPO, Choice, LogRange, Range, Schedule
from ..limits import Limits
from ..syntax import RawDefine, RawValue

INVALID = object()  # a value that failed validation (already reported)


class TooBig(Exception):
    """Expansion passed a hard limit: stop at once, the diagnostic is already recorded."""


def suggest(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'X'?)` for the closest candidate, or an empty string."""
    pool = list(candidates)
    by_lower = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean '{by_lower[match[0]]}'?)" if match else ""


def describe(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"string {v!r}"
    if v is None:
        return "None"
    if isinstance(v, tuple):
        return "(" + ", ".join(describe(x) if isinstance(x, str) else _fmt(x) for x in v) + ")"
    if isinstance(v, HPO):
        return "an HPO(...) search space"
    if isinstance(v, Schedule):
        return f"schedule {v.type}(...)"
    return _fmt(v)


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return repr(v)


def snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z])([A-Z])", r"_\1", name)
    s = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", s)
    return s.lower()


@dataclass
class Context:
    """One analysis: where diagnostics go, the limits, the macros in scope, and the counters
    that give layers their stable names (`dense_1`, `dense_2`, ...)."""

    out: Collector
    limits: Limits
    macros: dict[str, RawDefine] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    layer_count: int = 0

    def fresh_name(self, type_name: str, prefix: str) -> str:
        key = snake(type_name)
        self.counters[key] = self.counters.get(key, 0) + 1
        return f"{prefix}{key}_{self.counters[key]}"


def plain_value(rv: RawValue, ctx: Context, hpo_name: str, allow_hpo: bool = True) -> Any:
    """A RawValue -> IR value. Calls other than HPO(...) are errors here."""
    if rv.kind in ("number", "string"):
        return rv.value
    if rv.kind == "ident":
        lowered = rv.value.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
        if lowered in ("none", "null"):
            return None
        return rv.value  # a bare name stands for its text (`loss: mse`, `optimizer: Adam`)
    if rv.kind in ("tuple", "list"):
        items = [plain_value(x, ctx, f"{hpo_name}[{i}]", allow_hpo) for i, x in enumerate(rv.value)]
        return INVALID if INVALID in items else tuple(items)
    # call
    if rv.name == "HPO":
        if not allow_hpo:
            ctx.out.error("HPO(...) cannot be used here", rv.loc)
            return INVALID
        return hpo_value(rv, ctx, hpo_name)
    ctx.out.error(f"unexpected call {rv.name}(...) where a value was expected", rv.loc)
    return INVALID


def hpo_value(rv: RawValue, ctx: Context, name: str) -> Any:
    if len(rv.args) != 1 or rv.args[0].name is not None or rv.args[0].value.kind != "call":
        ctx.out.error(
            "HPO takes one search space: choice(...), range(a, b, step=s) or log_range(a, b)",
            rv.loc,
        )
        return INVALID
    space = rv.args[0].value
    kind = space.name
    pos = [a.value for a in space.args if a.name is None]
    named = {a.name: a.value for a in space.args if a.name is not None}
    if kind == "choice":
        if named or not pos:
            ctx.out.error("choice(...) takes one or more values", space.loc)
            return INVALID
        if len(pos) > ctx.limits.max_hpo_choices:
            ctx.out.error(
                f"choice(...) lists more than {ctx.limits.max_hpo_choices} values", space.loc
            )
            return INVALID
        values = [plain_value(v, ctx, f"{name}.{i}") for i, v in enumerate(pos)]
        if INVALID in values:
            return INVALID
        return HPO(Choice(tuple(values)), name, rv.loc)
    if kind == "range":
        if "step" in named and len(pos) == 2:
            pos.append(named.pop("step"))
        if named or len(pos) not in (2, 3):
            ctx.out.error("range takes a start, an end and an optional step=", space.loc)
            return INVALID
        nums = [_hpo_number(v, ctx) for v in pos]
        if INVALID in nums:
            return INVALID
        start, end = nums[0], nums[1]
        step = nums[2] if len(nums) == 3 else None
        if start >= end:
            ctx.out.error(f"range start must be below its end, got {start} and {end}", space.loc)
            return INVALID
        if step is not None and step <= 0:
            ctx.out.error(f"range step must be positive, got {step}", pos[2].loc)
            return INVALID
        return HPO(Range(start, end, step), name, rv.loc)
    if kind == "log_range":
        if named or len(pos) != 2:
            ctx.out.error("log_range takes a low and a high bound", space.loc)
            return INVALID
        low, high = (_hpo_number(v, ctx) for v in pos)
        if INVALID in (low, high):
            return INVALID
        if not 0 < low < high:
            ctx.out.error(f"log_range needs 0 < low < high, got {low} and {high}", space.loc)
            return INVALID
        return HPO(LogRange(float(low), float(high)), name, rv.loc)
    ctx.out.error(
        f"unknown search space '{kind}'{suggest(kind, ['choice', 'range', 'log_range'])}",
        space.loc,
    )
    return INVALID


def _hpo_number(rv: RawValue, ctx: Context) -> Any:
    if rv.kind != "number":
        ctx.out.error("a search-space bound must be a number", rv.loc)
        return INVALID
    return rv.value
