"""Sections: a network's input, layers, loss, optimizer (with its learning-rate schedule),
metrics, train and execution sections, and `research { }` blocks, each checked into the IR."""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..catalog import Kind, ParamSpec
from ..diagnostics import Collector, DSLError, Loc
from ..ir import Execution, Input, Layer, Network, Optimizer, Param, Research, Schedule, Training
from ..syntax import RawNetwork, RawResearch, RawValue, parse_raw
from .kinds import check_device, check_kind
from .layers import LayerBuilder, bind_args
from .values import INVALID, Context, describe, plain_value, suggest

_TRAIN_SPECS = {
    "epochs": ParamSpec("epochs", Kind.POS_INT),
    "batch_size": ParamSpec("batch_size", Kind.POS_INT),
    "validation_split": ParamSpec("validation_split", Kind.UNIT),
    "search_method": ParamSpec("search_method", Kind.CHOICE, choices=catalog.SEARCH_METHODS),
    "shuffle": ParamSpec("shuffle", Kind.BOOL),
}


class NetworkBuilder:
    def __init__(self, ctx: Context) -> None:
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
            layers = LayerBuilder(self.ctx).items(sec.payload, "")
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
            if value is not INVALID:
                value = check_kind(value, ParamSpec(pname, kind), canonical, a.value.loc, self.out)
            if value is not INVALID:
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
        bound = bind_args(rv.args, tuple(p.name for p in specs), canonical, rv.loc, self.out)
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
            if value is not INVALID:
                value = check_kind(value, pspec, canonical, arg.value.loc, self.out)
            if value is INVALID:
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
            if value is INVALID:
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
            if v is not INVALID:
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


def build_research(raw: RawResearch, out: Collector) -> Research:
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
