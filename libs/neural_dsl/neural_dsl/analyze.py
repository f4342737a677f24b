"""Raw syntax -> IR: name positional arguments, expand macros and `* N`, validate every value.

Each problem becomes a diagnostic at the token that caused it; analysis goes on
after an error so one run reports as much as it can, then raises DSLError.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import catalog
from .catalog import Kind, LayerSpec, ParamSpec
from .diagnostics import Collector, DSLError, Loc
from .ir import (
    HPO,
    Choice,
    Execution,
    Input,
    Layer,
    LogRange,
    Network,
    Optimizer,
    Param,
    Program,
    Range,
    Research,
    Schedule,
    Training,
    Value,
)
from .limits import Limits
from .syntax import (
    RawArg,
    RawBranch,
    RawDefine,
    RawLayer,
    RawNetwork,
    RawProgram,
    RawResearch,
    RawValue,
    parse_raw,
)

_INVALID = object()  # a value that failed validation (already reported)


class _TooBig(Exception):
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


# ---------------------------------------------------------------- values
@dataclass
class _Ctx:
    out: Collector
    limits: Limits
    macros: dict[str, RawDefine] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    layer_count: int = 0

    def fresh_name(self, type_name: str, prefix: str) -> str:
        key = snake(type_name)
        self.counters[key] = self.counters.get(key, 0) + 1
        return f"{prefix}{key}_{self.counters[key]}"


def plain_value(rv: RawValue, ctx: _Ctx, hpo_name: str, allow_hpo: bool = True) -> Any:
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
        return _INVALID if _INVALID in items else tuple(items)
    # call
    if rv.name == "HPO":
        if not allow_hpo:
            ctx.out.error("HPO(...) cannot be used here", rv.loc)
            return _INVALID
        return hpo_value(rv, ctx, hpo_name)
    ctx.out.error(f"unexpected call {rv.name}(...) where a value was expected", rv.loc)
    return _INVALID


def hpo_value(rv: RawValue, ctx: _Ctx, name: str) -> Any:
    if len(rv.args) != 1 or rv.args[0].name is not None or rv.args[0].value.kind != "call":
        ctx.out.error(
            "HPO takes one search space: choice(...), range(a, b, step=s) or log_range(a, b)",
            rv.loc,
        )
        return _INVALID
    space = rv.args[0].value
    kind = space.name
    pos = [a.value for a in space.args if a.name is None]
    named = {a.name: a.value for a in space.args if a.name is not None}
    if kind == "choice":
        if named or not pos:
            ctx.out.error("choice(...) takes one or more values", space.loc)
            return _INVALID
        if len(pos) > ctx.limits.max_hpo_choices:
            ctx.out.error(
                f"choice(...) lists more than {ctx.limits.max_hpo_choices} values", space.loc
            )
            return _INVALID
        values = [plain_value(v, ctx, f"{name}.{i}") for i, v in enumerate(pos)]
        if _INVALID in values:
            return _INVALID
        return HPO(Choice(tuple(values)), name, rv.loc)
    if kind == "range":
        if "step" in named and len(pos) == 2:
            pos.append(named.pop("step"))
        if named or len(pos) not in (2, 3):
            ctx.out.error("range takes a start, an end and an optional step=", space.loc)
            return _INVALID
        nums = [_hpo_number(v, ctx) for v in pos]
        if _INVALID in nums:
            return _INVALID
        start, end = nums[0], nums[1]
        step = nums[2] if len(nums) == 3 else None
        if start >= end:
            ctx.out.error(f"range start must be below its end, got {start} and {end}", space.loc)
            return _INVALID
        if step is not None and step <= 0:
            ctx.out.error(f"range step must be positive, got {step}", pos[2].loc)
            return _INVALID
        return HPO(Range(start, end, step), name, rv.loc)
    if kind == "log_range":
        if named or len(pos) != 2:
            ctx.out.error("log_range takes a low and a high bound", space.loc)
            return _INVALID
        low, high = (_hpo_number(v, ctx) for v in pos)
        if _INVALID in (low, high):
            return _INVALID
        if not 0 < low < high:
            ctx.out.error(f"log_range needs 0 < low < high, got {low} and {high}", space.loc)
            return _INVALID
        return HPO(LogRange(float(low), float(high)), name, rv.loc)
    ctx.out.error(
        f"unknown search space '{kind}'{suggest(kind, ['choice', 'range', 'log_range'])}",
        space.loc,
    )
    return _INVALID


def _hpo_number(rv: RawValue, ctx: _Ctx) -> Any:
    if rv.kind != "number":
        ctx.out.error("a search-space bound must be a number", rv.loc)
        return _INVALID
    return rv.value


# ---------------------------------------------------------------- kinds
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
            return _INVALID
        if k in (Kind.POS_INT, Kind.NONNEG_INT, Kind.INT) and isinstance(v, float):
            if not v.is_integer():
                out.error(f"{label} must be an integer, got {v}", loc)
                return _INVALID
            out.warn(f"Implicit conversion of {v} to integer {int(v)}", loc)
            v = int(v)
        if k is Kind.POS_INT and v <= 0:
            out.error(f"{label} must be a positive integer, got {v}", loc)
            return _INVALID
        if k is Kind.NONNEG_INT and v < 0:
            out.error(f"{label} must be a non-negative integer, got {v}", loc)
            return _INVALID
        if k is Kind.RATE and not 0 <= v < 1:
            out.error(f"{label} should be between 0 and 1 (0 <= {spec.name} < 1), got {v}", loc)
            return _INVALID
        if k is Kind.UNIT and not 0 <= v <= 1:
            out.error(f"{label} must be between 0 and 1, got {v}", loc)
            return _INVALID
        if k is Kind.POS_FLOAT and v <= 0:
            out.error(f"{label} must be positive, got {v}", loc)
            return _INVALID
        if k is Kind.NONNEG_FLOAT and v < 0:
            out.error(f"{label} must not be negative, got {v}", loc)
            return _INVALID
        if k in (Kind.RATE, Kind.UNIT, Kind.POS_FLOAT, Kind.NONNEG_FLOAT, Kind.FLOAT):
            return float(v)
        return v
    if k is Kind.BOOL:
        if not isinstance(v, bool):
            out.error(f"{label} must be true or false, got {describe(v)}", loc)
            return _INVALID
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
            return _INVALID
        return v.lower()
    if k is Kind.CHOICE:
        if not isinstance(v, str) or v.lower() not in spec.choices:
            out.error(f"{label} must be one of {', '.join(spec.choices)}, got {describe(v)}", loc)
            return _INVALID
        return v.lower()
    if k is Kind.STR:
        if not isinstance(v, str):
            out.error(f"{label} must be a string, got {describe(v)}", loc)
            return _INVALID
        return v
    if k in (Kind.SIZE, Kind.DIMS):
        items = v if isinstance(v, tuple) else (v,)
        if k is Kind.DIMS and not isinstance(v, tuple):
            items = (v,)
        if not items or not all(
            isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items
        ):
            out.error(f"{label} should be positive integers, got {describe(v)}", loc)
            return _INVALID
        if k is Kind.SIZE and spec.rank and len(items) not in (1, spec.rank):
            out.error(f"{label} needs {spec.rank} values, got {len(items)}", loc)
            return _INVALID
        if k is Kind.SIZE and spec.rank:
            return items * spec.rank if len(items) == 1 else tuple(items)
        return tuple(items)
    out.error(f"{label}: unsupported value {describe(v)}", loc)
    return _INVALID


def _check_hpo(v: HPO, spec: ParamSpec, owner: str, loc: Loc, out: Collector) -> Any:
    s = v.space
    if isinstance(s, Choice):
        checked = []
        for x in s.values:
            if isinstance(x, HPO):
                y = _check_hpo(x, spec, owner, loc, out)
            else:
                y = check_kind(x, spec, owner, loc, out)
            if y is _INVALID:
                return _INVALID
            checked.append(y)
        return HPO(Choice(tuple(checked)), v.name, v.loc)
    if spec.kind not in _NUMERIC:
        out.error(f"{owner} {spec.name} takes names, so only HPO(choice(...)) fits it", loc)
        return _INVALID
    ints = spec.kind in (Kind.POS_INT, Kind.NONNEG_INT, Kind.INT)
    if isinstance(s, Range):
        bounds = (s.start, s.end) + ((s.step,) if s.step is not None else ())
        if ints and not all(isinstance(b, int) for b in bounds):
            out.error(f"{owner} {spec.name} is an integer: its range needs integer bounds", loc)
            return _INVALID
        for b in (s.start, s.end):
            if check_kind(b, spec, owner, loc, out) is _INVALID:
                return _INVALID
        return v
    if ints:
        out.error(f"{owner} {spec.name} is an integer: use range or choice, not log_range", loc)
        return _INVALID
    for b in (s.low, s.high):
        if check_kind(b, spec, owner, loc, out) is _INVALID:
            return _INVALID
    return v


# ---------------------------------------------------------------- layers
def _bind_args(
    args: list[RawArg], positional: tuple[str, ...], owner: str, loc: Loc, out: Collector
) -> dict[str, RawArg] | None:
    """Map `f(a, b, name=c)` onto parameter names, Python-style."""
    bound: dict[str, RawArg] = {}
    seen_named = False
    n_pos = 0
    ok = True
    for a in args:
        if a.name is None:
            if seen_named:
                out.error(f"{owner}: positional argument after a named one", a.loc)
                ok = False
                continue
            if n_pos >= len(positional):
                out.error(
                    f"{owner} takes at most {len(positional)} positional argument"
                    f"{'s' if len(positional) != 1 else ''}, got more",
                    a.loc,
                )
                ok = False
                continue
            name = positional[n_pos]
            n_pos += 1
        else:
            seen_named = True
            name = a.name
        if name in bound:
            out.error(f"{owner} got '{name}' twice", a.loc)
            ok = False
            continue
        bound[name] = RawArg(name, a.value, a.loc)
    return bound if ok else None


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


class _LayerBuilder:
    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.out = ctx.out

    def items(
        self, items: list[RawLayer | RawBranch], prefix: str, stack: tuple[str, ...] = ()
    ) -> list[Layer]:
        result: list[Layer] = []
        for item in items:
            result.extend(self.item(item, prefix, stack))
        return result

    def _count(self, loc: Loc) -> None:
        self.ctx.layer_count += 1
        if self.ctx.layer_count > self.ctx.limits.max_layers:
            self.out.error(
                f"the network expands to more than {self.ctx.limits.max_layers} layers", loc
            )
            raise _TooBig

    def item(self, item: RawLayer | RawBranch, prefix: str, stack: tuple[str, ...]) -> list[Layer]:
        if isinstance(item, RawBranch):
            self._count(item.loc)
            name = f"{prefix}{item.name}"
            subs = self.items(item.block, f"{name}/", stack)
            return [
                Layer(
                    catalog.BRANCH,
                    name,
                    (Param("input", item.name, item.loc),),
                    tuple(subs),
                    loc=item.loc,
                )
            ]
        times = self._repeat(item)
        device = None
        if len(item.devices) > 1:
            self.out.error("a layer takes one device placement", item.devices[1][1])
        if item.devices:
            device = check_device(item.devices[0][0], item.devices[0][1], self.out)
        spec = catalog.lookup_layer(item.name)
        result: list[Layer] = []
        if spec is None:
            if item.name in self.ctx.macros:
                for _ in range(times):
                    result.extend(self._macro(item, prefix, stack, device))
                return result
            self.out.error(
                f"Undefined macro or unknown layer '{item.name}'"
                + suggest(item.name, [*catalog.LAYERS, *self.ctx.macros]),
                item.loc,
            )
            return []
        for _ in range(times):
            layer = self.layer(spec, item, prefix, stack, device)
            if layer is not None:
                result.append(layer)
        return result

    def _repeat(self, item: RawLayer) -> int:
        if not item.repeats:
            return 1
        if len(item.repeats) > 1:
            self.out.error("a layer takes one repetition `* N`", item.repeats[1][1])
        rv, loc = item.repeats[0]
        n = rv.value
        if not isinstance(n, int) or n < 1:
            self.out.error(f"repetition count must be a positive integer, got {rv.value}", loc)
            return 1
        if n > self.ctx.limits.max_repeat:
            self.out.error(
                f"repetition count {n} is over the limit of {self.ctx.limits.max_repeat}", loc
            )
            return 1
        return n

    def _macro(
        self, item: RawLayer, prefix: str, stack: tuple[str, ...], device: str | None
    ) -> list[Layer]:
        if item.name in stack:
            chain = " -> ".join((*stack[stack.index(item.name) :], item.name))
            self.out.error(f"recursive macro '{item.name}' ({chain})", item.loc)
            return []
        if item.args:
            self.out.error(f"macro '{item.name}' takes no arguments", item.args[0].loc)
        if item.block is not None:
            self.out.error(f"macro '{item.name}' takes no block of sublayers", item.loc)
        body = self.items(self.ctx.macros[item.name].body, prefix, (*stack, item.name))
        return [_tag_macro(layer, item.name, device) for layer in body]

    def layer(
        self,
        spec: LayerSpec,
        item: RawLayer,
        prefix: str,
        stack: tuple[str, ...],
        device: str | None,
    ) -> Layer | None:
        self._count(item.loc)
        name = self.ctx.fresh_name(spec.name, prefix)
        ok = True
        bound = _bind_args(item.args or [], spec.positional, spec.name, item.loc, self.out)
        if bound is None:
            return None
        params: list[Param] = []
        wrapped: Layer | None = None
        for pname, arg in bound.items():
            pspec = spec.param(pname)
            if pspec is None:
                self.out.error(
                    f"{spec.name} has no parameter '{pname}'"
                    + suggest(pname, [p.name for p in spec.params]),
                    arg.loc,
                )
                ok = False
                continue
            if pspec.kind is Kind.LAYER:
                wrapped = self._wrapped(arg, spec, f"{name}/", stack)
                ok = ok and wrapped is not None
                continue
            raw = plain_value(arg.value, self.ctx, f"layers.{name}.{pname}")
            if raw is _INVALID:
                ok = False
                continue
            value = check_kind(raw, pspec, spec.name, arg.value.loc, self.out)
            if value is _INVALID:
                ok = False
                continue
            params.append(Param(pname, value, arg.value.loc))
        for pspec in spec.params:
            if pspec.required and pspec.name not in bound:
                what = "layer requires" if spec.family in ("core", "output", "conv") else "requires"
                self.out.error(f"{spec.name} {what} '{pspec.name}' parameter", item.loc)
                ok = False
        subs: tuple[Layer, ...] = ()
        if item.block is not None:
            if not spec.block:
                self.out.error(f"{spec.name} takes no block of sublayers", item.loc)
                ok = False
            else:
                subs = tuple(self.items(item.block, f"{name}/", stack))
        if not ok:
            return None
        layer = Layer(spec.name, name, tuple(params), subs, wrapped, device, loc=item.loc)
        self._check_size(layer)
        return layer

    def _wrapped(
        self, arg: RawArg, spec: LayerSpec, prefix: str, stack: tuple[str, ...]
    ) -> Layer | None:
        rv = arg.value
        if rv.kind not in ("call", "ident"):
            self.out.error(f"{spec.name} wraps a layer, e.g. {spec.name}(Dense(64))", rv.loc)
            return None
        inner = RawLayer(rv.name or rv.value, rv.loc, rv.args if rv.kind == "call" else [], None)
        inner_spec = catalog.lookup_layer(inner.name)
        if inner_spec is None or inner_spec.family in ("wrapper", "merge"):
            self.out.error(f"{spec.name} cannot wrap '{inner.name}'", rv.loc)
            return None
        return self.layer(inner_spec, inner, prefix, stack, None)

    def _check_size(self, layer: Layer) -> None:
        """Parameters a layer has even with a single input channel: a cheap early bound."""
        filters = layer.get("filters") or layer.get("units") or layer.get("output_dim")
        kernel = layer.get("kernel_size") or (1,)
        if layer.type == "Embedding":
            filters = layer.get("input_dim", 1) * layer.get("output_dim", 1)
        if not isinstance(filters, int) or not all(isinstance(k, int) for k in kernel):
            return
        least = filters * math.prod(kernel)
        if least > self.ctx.limits.max_parameters:
            self.out.error(
                f"{layer.type} would have at least {least:,} parameters, over the limit of "
                f"{self.ctx.limits.max_parameters:,}",
                layer.loc,
            )


def _tag_macro(layer: Layer, macro: str, device: str | None) -> Layer:
    from dataclasses import replace

    return replace(
        layer,
        macro=layer.macro or macro,
        device=device if device is not None else layer.device,
    )


# ---------------------------------------------------------------- network sections
_TRAIN_SPECS = {
    "epochs": ParamSpec("epochs", Kind.POS_INT),
    "batch_size": ParamSpec("batch_size", Kind.POS_INT),
    "validation_split": ParamSpec("validation_split", Kind.UNIT),
    "search_method": ParamSpec("search_method", Kind.CHOICE, choices=catalog.SEARCH_METHODS),
    "shuffle": ParamSpec("shuffle", Kind.BOOL),
}


class _NetworkBuilder:
    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.out = ctx.out

    def build(self, raw: RawNetwork) -> Network | None:
        by_kind: dict[str, list[Any]] = {}
        for s in raw.sections:
            by_kind.setdefault(s.kind, []).append(s)
        for kind, secs in by_kind.items():
            if len(secs) > 1:
                word = "Duplicate input section" if kind == "input" else f"duplicate {kind} section"
                self.out.error(word, secs[1].loc)
        if "input" not in by_kind:
            self.out.error("Network must have an input section", raw.loc)
        if "layers" not in by_kind:
            self.out.error("Network must have a layers section", raw.loc)
        inputs = self._inputs(by_kind["input"][0]) if "input" in by_kind else ()
        layers: list[Layer] = []
        if "layers" in by_kind:
            sec = by_kind["layers"][0]
            if not sec.payload:
                self.out.error("Layers section cannot be empty", sec.loc)
            layers = _LayerBuilder(self.ctx).items(sec.payload, "")
        loss = self._loss(by_kind["loss"][0]) if "loss" in by_kind else None
        opt = self._optimizer(by_kind["optimizer"][0]) if "optimizer" in by_kind else None
        metrics = self._metrics(by_kind["metrics"][0]) if "metrics" in by_kind else ()
        training = self._training(by_kind["train"][0]) if "train" in by_kind else Training()
        execution = (
            self._execution(by_kind["execution"][0]) if "execution" in by_kind else Execution()
        )
        return Network(
            raw.name,
            tuple(inputs),
            tuple(layers),
            loss,
            opt,
            metrics,
            training,
            execution,
            loc=raw.loc,
        )

    def _shape(self, rv: RawValue, name: str, loc: Loc) -> Input | None:
        dims: list[int | None] = []
        items = rv.value if rv.kind == "tuple" else [rv]
        for d in items:
            if d.kind == "ident" and d.value.lower() == "none":
                dims.append(None)
            elif d.kind == "number" and isinstance(d.value, int) and d.value > 0:
                dims.append(d.value)
            else:
                self.out.error(
                    f"Input dimensions must be positive integers or None, got {d.value!r}",
                    d.loc,
                )
                return None
        if not dims or all(d is None for d in dims):
            self.out.error("Input needs at least one known dimension", loc)
            return None
        return Input(name, tuple(dims), loc)

    def _inputs(self, sec: Any) -> list[Input]:
        payload = sec.payload
        if isinstance(payload, RawValue):
            one = self._shape(payload, "input", sec.loc)
            return [one] if one else []
        names: set[str] = set()
        result = []
        for name, shape, loc in payload:
            if name in names:
                self.out.error(f"input '{name}' is declared twice", loc)
                continue
            names.add(name)
            one = self._shape(shape, name, loc)
            if one:
                result.append(one)
        if not result and not payload:
            self.out.error("Network must have at least one input", sec.loc)
        return result

    def _name_value(self, rv: RawValue, what: str) -> str | None:
        if rv.kind not in ("string", "ident"):
            self.out.error(f"{what} must be a name, got {rv.kind}", rv.loc)
            return None
        return rv.value

    def _loss(self, sec: Any) -> str | None:
        name = self._name_value(sec.payload, "loss")
        if name is None:
            return None
        if name.lower() not in catalog.LOSSES:
            self.out.error(
                f"Invalid loss function '{name}'" + suggest(name, catalog.LOSSES), sec.payload.loc
            )
            return None
        return name.lower()

    def _metrics(self, sec: Any) -> tuple[str, ...]:
        rv = sec.payload
        items = rv.value if rv.kind in ("list", "tuple") else [rv]
        names = []
        for x in items:
            name = self._name_value(x, "a metric")
            if name is None:
                continue
            if name.lower() not in catalog.METRICS:
                self.out.error(f"unknown metric '{name}'" + suggest(name, catalog.METRICS), x.loc)
                continue
            names.append(name.lower())
        return tuple(names)

    def _optimizer(self, sec: Any) -> Optimizer | None:
        rv: RawValue = sec.payload
        if rv.kind == "string" and "(" in rv.value:
            # `optimizer: "Adam(learning_rate=1e-4)"`: the string holds an optimizer call.
            try:
                inner = parse_raw(rv.value, start="value", limits=self.ctx.limits)
            except DSLError as exc:
                d = exc.first
                self.out.error(f"in optimizer string: {d.message}", rv.loc)
                return None
            _shift(inner, rv.loc)
            rv = inner
        if rv.kind in ("string", "ident"):
            name, args = rv.value, []
        elif rv.kind == "call":
            name, args = rv.name, rv.args
        else:
            self.out.error("optimizer must be a name such as Adam or a call Adam(...)", rv.loc)
            return None
        canonical = catalog.lookup_optimizer(name)
        if canonical is None:
            self.out.error(
                f"Invalid optimizer '{name}'" + suggest(name, catalog.OPTIMIZERS), rv.loc
            )
            return None
        params = []
        for a in args:
            pname = a.name or "learning_rate"
            if a.name is None and a is not args[0]:
                self.out.error(f"{canonical} takes only learning_rate positionally", a.loc)
                continue
            accepts = catalog.OPTIMIZER_ACCEPTS[canonical]
            kind = catalog.OPTIMIZER_PARAMS.get(pname) if pname in accepts else None
            if kind is None:
                self.out.error(
                    f"{canonical} has no parameter '{pname}'" + suggest(pname, accepts), a.loc
                )
                continue
            if pname == "learning_rate" and a.value.kind == "call" and a.value.name != "HPO":
                sched = self._schedule(a.value)
                if sched is not None:
                    params.append(Param(pname, sched, a.value.loc))
                continue
            value = plain_value(a.value, self.ctx, f"optimizer.{pname}")
            if value is not _INVALID:
                value = check_kind(value, ParamSpec(pname, kind), canonical, a.value.loc, self.out)
            if value is not _INVALID:
                params.append(Param(pname, value, a.value.loc))
        return Optimizer(canonical, tuple(params), rv.loc)

    def _schedule(self, rv: RawValue) -> Schedule | None:
        canonical = catalog.lookup_schedule(rv.name)
        if canonical is None:
            self.out.error(
                f"unknown learning-rate schedule '{rv.name}'" + suggest(rv.name, catalog.SCHEDULES),
                rv.loc,
            )
            return None
        specs = catalog.SCHEDULES[canonical]
        bound = _bind_args(rv.args, tuple(p.name for p in specs), canonical, rv.loc, self.out)
        if bound is None:
            return None
        params = []
        ok = True
        for pname, arg in bound.items():
            pspec = next((p for p in specs if p.name == pname), None)
            if pspec is None:
                self.out.error(
                    f"{canonical} has no parameter '{pname}'"
                    + suggest(pname, [p.name for p in specs]),
                    arg.loc,
                )
                ok = False
                continue
            value = plain_value(arg.value, self.ctx, f"optimizer.learning_rate.{pname}")
            if value is not _INVALID:
                value = check_kind(value, pspec, canonical, arg.value.loc, self.out)
            if value is _INVALID:
                ok = False
                continue
            params.append(Param(pname, value, arg.value.loc))
        for pspec in specs:
            if pspec.required and pspec.name not in bound:
                self.out.error(f"{canonical} requires '{pspec.name}'", rv.loc)
                ok = False
        return Schedule(canonical, tuple(params), rv.loc) if ok else None

    def _settings(
        self, settings: list[tuple[str, RawValue, Loc]], specs: dict[str, ParamSpec], what: str
    ) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, rv, loc in settings:
            spec = specs.get(key)
            if spec is None:
                self.out.error(f"unknown {what} setting '{key}'" + suggest(key, specs), loc)
                continue
            if key in values:
                self.out.error(f"{what} setting '{key}' is given twice", loc)
                continue
            value = plain_value(rv, self.ctx, f"{what}.{key}")
            if value is _INVALID:
                continue
            values[key] = value
        return values

    def _training(self, sec: Any) -> Training:
        values = self._settings(sec.payload, _TRAIN_SPECS, "train")
        locs = {k: rv.loc for k, rv, _ in sec.payload}
        checked: dict[str, Any] = {}
        for key, value in values.items():
            spec = _TRAIN_SPECS[key]
            sub = Collector(self.out.stage)
            v = check_kind(value, spec, "train", locs[key], sub)
            for d in sub.items:
                msg = d.message
                if key == "validation_split" and d.severity.value == "error":
                    msg = f"validation_split must be between 0 and 1, got {value}"
                elif key in ("epochs", "batch_size") and d.severity.value == "error":
                    msg = (
                        "Training parameters must be positive: "
                        f"{key} must be a positive integer, got {describe(value)}"
                    )
                (self.out.error if d.severity.value == "error" else self.out.warn)(msg, d.loc)
            if v is not _INVALID:
                checked[key] = v
        split = checked.get("validation_split")
        if isinstance(split, float) and split >= 1.0:
            self.out.error(
                f"validation_split must be between 0 and 1, got {split}", locs["validation_split"]
            )
        return Training(**checked)

    def _execution(self, sec: Any) -> Execution:
        values = self._settings(sec.payload, {"device": ParamSpec("device", Kind.STR)}, "execution")
        device = values.get("device", "auto")
        if not isinstance(device, str):
            loc = next(loc for k, _, loc in sec.payload if k == "device")
            self.out.error(f"execution device must be a string, got {describe(device)}", loc)
            return Execution()
        loc = next((rv.loc for k, rv, _ in sec.payload if k == "device"), sec.loc)
        return Execution(check_device(device, loc, self.out) or "auto")


def _shift(rv: RawValue, base: Loc) -> None:
    """Move locations parsed from inside a string literal to where that string sits."""
    if rv.loc.line == 1:
        rv.loc = Loc(base.line, base.column + rv.loc.column)
    else:
        rv.loc = Loc(base.line + rv.loc.line - 1, rv.loc.column)
    children = rv.value if rv.kind in ("tuple", "list") else []
    for c in children:
        _shift(c, base)
    for a in rv.args:
        _shift(a.value, base)
        a.loc = a.value.loc if a.name is None else Loc(a.value.loc.line, a.value.loc.column)


# ---------------------------------------------------------------- research
def _research(raw: RawResearch, out: Collector) -> Research:
    metrics: list[tuple[str, float]] = []
    refs: list[str] = []
    for name, loc, settings in raw.blocks:
        if name == "metrics":
            for key, rv, _ in settings:
                if rv.kind != "number":
                    out.error(f"research metric '{key}' must be a number", rv.loc)
                else:
                    metrics.append((key, float(rv.value)))
        elif name == "references":
            for key, rv, kloc in settings:
                if key != "paper" or rv.kind != "string":
                    out.error('a reference is written paper: "Title"', kloc)
                else:
                    refs.append(rv.value)
        else:
            out.error(f"unknown research block '{name}' (expected metrics or references)", loc)
    return Research(raw.name, tuple(metrics), tuple(refs), raw.loc)


# ---------------------------------------------------------------- entry points
def _defines(defines: list[RawDefine], ctx: _Ctx) -> None:
    for d in defines:
        if d.name in ctx.macros:
            ctx.out.error(f"macro '{d.name}' is defined twice", d.loc)
            continue
        if catalog.lookup_layer(d.name):
            ctx.out.error(f"macro '{d.name}' has the name of a built-in layer", d.loc)
            continue
        ctx.macros[d.name] = d
    # Expand every macro once on its own, so errors inside unused macros are reported too.
    for d in defines:
        if ctx.macros.get(d.name) is d:
            _LayerBuilder(_Ctx(ctx.out, ctx.limits, ctx.macros)).items(d.body, "", (d.name,))


def analyze(raw: RawProgram, limits: Limits | None = None) -> tuple[Program, Collector]:
    out = Collector("semantic")
    ctx = _Ctx(out, limits or Limits())
    networks: list[Network] = []
    try:
        _defines(raw.defines, ctx)
        seen: dict[str, Loc] = {}
        for rn in raw.networks:
            if rn.name in seen:
                first = seen[rn.name]
                out.error(
                    f"network '{rn.name}' is declared twice (first at line {first.line})", rn.loc
                )
            seen.setdefault(rn.name, rn.loc)
            net_ctx = _Ctx(out, ctx.limits, ctx.macros)
            net = _NetworkBuilder(net_ctx).build(rn)
            if net is not None:
                networks.append(net)
    except _TooBig:
        pass
    if not raw.networks and not raw.defines and not raw.research:
        out.error("the program declares no network", Loc(1, 1))
    research = [_research(r, out) for r in raw.research]
    out.items = list(dict.fromkeys(out.items))  # a macro used twice reports its errors once
    return Program(tuple(networks), tuple(research)), out


def analyze_layer(
    raw: RawLayer | RawBranch, defines: list[RawDefine], limits: Limits | None = None
) -> tuple[list[Layer], Collector]:
    """One layer on its own (with the macros of a prelude), as the `layer` start rule gives it."""
    out = Collector("semantic")
    ctx = _Ctx(out, limits or Limits())
    layers: list[Layer] = []
    try:
        _defines(defines, ctx)
        layers = _LayerBuilder(ctx).item(raw, "", ())
    except _TooBig:
        pass
    out.items = list(dict.fromkeys(out.items))
    return layers, out


__all__ = ["Value", "analyze", "analyze_layer", "suggest"]
