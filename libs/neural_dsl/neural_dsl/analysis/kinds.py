"""Kinds: each parameter value checked (and canonicalized) against its kind in the catalog
(positive integer, rate, activation, size, ...), HPO candidates included; device names."""

from __future__ import annotations

import re
from typing import Any

from .. import catalog
from ..catalog import Kind, ParamSpec
from ..diagnostics import Collector, Loc
from ..ir import HPO, Choice, Range
from .values import INVALID, describe, suggest

_NUMERIC = {
    Kind.POS_INT,
    Kind.NONNEG_INT,
    Kind.INT,
    Kind.RATE,
    Kind.UNIT,
    Kind.POS_FLOAT,
    Kind.NONNEG_FLOAT,
    Kind.FLOAT,
}


def check_kind(v: Any, spec: ParamSpec, owner: str, loc: Loc, out: Collector) -> Any:
    """Validate (and canonicalize) one value for a parameter. HPO candidates are each checked."""
    if isinstance(v, HPO):
        return _check_hpo(v, spec, owner, loc, out)
    label = f"{owner} {spec.name}"
    k = spec.kind
    if k in _NUMERIC:
        if isinstance(v, bool) or not isinstance(v, int | float):
            out.error(f"{label} must be a number ({k.value}), got {describe(v)}", loc)
            return INVALID
        if k in (Kind.POS_INT, Kind.NONNEG_INT, Kind.INT) and isinstance(v, float):
            if not v.is_integer():
                out.error(f"{label} must be an integer, got {v}", loc)
                return INVALID
            out.warn(f"Implicit conversion of {v} to integer {int(v)}", loc)
            v = int(v)
        if k is Kind.POS_INT and v <= 0:
            out.error(f"{label} must be a positive integer, got {v}", loc)
            return INVALID
        if k is Kind.NONNEG_INT and v < 0:
            out.error(f"{label} must be a non-negative integer, got {v}", loc)
            return INVALID
        if k is Kind.RATE and not 0 <= v < 1:
            out.error(f"{label} should be between 0 and 1 (0 <= {spec.name} < 1), got {v}", loc)
            return INVALID
        if k is Kind.UNIT and not 0 <= v <= 1:
            out.error(f"{label} must be between 0 and 1, got {v}", loc)
            return INVALID
        if k is Kind.POS_FLOAT and v <= 0:
            out.error(f"{label} must be positive, got {v}", loc)
            return INVALID
        if k is Kind.NONNEG_FLOAT and v < 0:
            out.error(f"{label} must not be negative, got {v}", loc)
            return INVALID
        if k in (Kind.RATE, Kind.UNIT, Kind.POS_FLOAT, Kind.NONNEG_FLOAT, Kind.FLOAT):
            return float(v)
        return v
    if k is Kind.BOOL:
        if not isinstance(v, bool):
            out.error(f"{label} must be true or false, got {describe(v)}", loc)
            return INVALID
        return v
    if k is Kind.ACTIVATION:
        if v is None:
            return None
        if not isinstance(v, str) or v.lower() not in catalog.ACTIVATIONS:
            text = v if isinstance(v, str) else describe(v)
            out.error(
                f"Invalid activation function '{text}'"
                + (suggest(v, catalog.ACTIVATIONS) if isinstance(v, str) else ""),
                loc,
            )
            return INVALID
        return v.lower()
    if k is Kind.CHOICE:
        if not isinstance(v, str) or v.lower() not in spec.choices:
            out.error(f"{label} must be one of {', '.join(spec.choices)}, got {describe(v)}", loc)
            return INVALID
        return v.lower()
    if k is Kind.STR:
        if not isinstance(v, str):
            out.error(f"{label} must be a string, got {describe(v)}", loc)
            return INVALID
        return v
    if k in (Kind.SIZE, Kind.DIMS):
        items = v if isinstance(v, tuple) else (v,)
        if k is Kind.DIMS and not isinstance(v, tuple):
            items = (v,)
        if not items or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items
        ):
            out.error(f"{label} should be positive integers, got {describe(v)}", loc)
            return INVALID
        if k is Kind.SIZE and spec.rank and len(items) not in (1, spec.rank):
            out.error(f"{label} needs {spec.rank} values, got {len(items)}", loc)
            return INVALID
        if k is Kind.SIZE and spec.rank:
            return items * spec.rank if len(items) == 1 else tuple(items)
        return tuple(items)
    out.error(f"{label}: unsupported value {describe(v)}", loc)
    return INVALID


def _check_hpo(v: HPO, spec: ParamSpec, owner: str, loc: Loc, out: Collector) -> Any:
    s = v.space
    if isinstance(s, Choice):
        checked = []
        for x in s.values:
            if isinstance(x, HPO):
                y = _check_hpo(x, spec, owner, loc, out)
            else:
                y = check_kind(x, spec, owner, loc, out)
            if y is INVALID:
                return INVALID
            checked.append(y)
        return HPO(Choice(tuple(checked)), v.name, v.loc)
    if spec.kind not in _NUMERIC:
        out.error(f"{owner} {spec.name} takes names, so only HPO(choice(...)) fits it", loc)
        return INVALID
    ints = spec.kind in (Kind.POS_INT, Kind.NONNEG_INT, Kind.INT)
    if isinstance(s, Range):
        bounds = (s.start, s.end) + ((s.step,) if s.step is not None else ())
        if ints and not all(isinstance(b, int) for b in bounds):
            out.error(f"{owner} {spec.name} is an integer: its range needs integer bounds", loc)
            return INVALID
        for b in (s.start, s.end):
            if check_kind(b, spec, owner, loc, out) is INVALID:
                return INVALID
        return v
    if ints:
        out.error(f"{owner} {spec.name} is an integer: use range or choice, not log_range", loc)
        return INVALID
    for b in (s.low, s.high):
        if check_kind(b, spec, owner, loc, out) is INVALID:
            return INVALID
    return v


_DEVICE_RE = re.compile(r"(cpu|gpu|cuda|tpu|mps)(:\d{1,3})?|auto", re.IGNORECASE)


def check_device(device: str, loc: Loc, out: Collector) -> str | None:
    if not _DEVICE_RE.fullmatch(device):
        out.error(
            f"invalid device '{device}': use cpu, gpu, cuda, tpu or mps, optionally with an "
            "index such as 'cuda:0', or 'auto'",
            loc,
        )
        return None
    return device.lower()
