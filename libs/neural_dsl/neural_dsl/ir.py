"""The intermediate representation: typed, immutable, with a stable versioned JSON form.

Services store and exchange this, never DSL text. Macros and `* N` repetition are
already expanded; layer types are canonical; positional arguments are named.
Every node keeps the source location it came from, so later stages (code
generation, training) can still point at the user's line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .diagnostics import Loc

IR_VERSION = 1


# ---------------------------------------------------------------- values
@dataclass(frozen=True)
class Choice:
    """HPO(choice(a, b, ...)): one of the listed values (which may be HPO spaces themselves)."""

    values: tuple[Value, ...]


@dataclass(frozen=True)
class Range:
    """HPO(range(start, end, step=s)): start, start+step, ... up to end (inclusive)."""

    start: int | float
    end: int | float
    step: int | float | None = None


@dataclass(frozen=True)
class LogRange:
    """HPO(log_range(low, high)): sampled log-uniformly in [low, high]."""

    low: float
    high: float


HPOSpace: TypeAlias = Choice | Range | LogRange


@dataclass(frozen=True)
class HPO:
    """A hyperparameter to be chosen by a search. `name` is its stable path, e.g.
    `layers.dense_1.units` or `optimizer.learning_rate.initial_learning_rate`."""

    space: HPOSpace
    name: str
    loc: Loc = field(compare=False)


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule, e.g. ExponentialDecay(initial_learning_rate, decay_steps, ...)."""

    type: str
    params: tuple[Param, ...]
    loc: Loc = field(compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        return _get(self.params, name, default)


Scalar: TypeAlias = int | float | str | bool | None
Value: TypeAlias = Scalar | tuple["Value", ...] | HPO | Schedule


@dataclass(frozen=True)
class Param:
    name: str
    value: Value
    loc: Loc = field(compare=False)


def _get(params: tuple[Param, ...], name: str, default: Any) -> Any:
    for p in params:
        if p.name == name:
            return p.value
    return default


# ---------------------------------------------------------------- structure
@dataclass(frozen=True)
class Layer:
    """One layer. `name` is unique in its network (`conv2d_1`, `residual_connection_1/conv2d_2`)."""

    type: str
    name: str
    params: tuple[Param, ...] = ()
    sublayers: tuple[Layer, ...] = ()
    wrapped: Layer | None = None  # the inner layer of TimeDistributed / Bidirectional
    device: str | None = None
    macro: str | None = None  # the `define` block this layer was expanded from
    loc: Loc = field(default=Loc(1, 1), compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        return _get(self.params, name, default)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def walk(self) -> Iterator[Layer]:
        """This layer and every layer inside it, depth first."""
        yield self
        if self.wrapped is not None:
            yield from self.wrapped.walk()
        for sub in self.sublayers:
            yield from sub.walk()


@dataclass(frozen=True)
class Input:
    """A named model input. `shape` is as written: a leading None is the batch dimension."""

    name: str
    shape: tuple[int | None, ...]
    loc: Loc = field(compare=False)

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        """The shape of one example (the batch dimension removed)."""
        return self.shape[1:] if self.shape and self.shape[0] is None else self.shape


@dataclass(frozen=True)
class Optimizer:
    type: str
    params: tuple[Param, ...] = ()
    loc: Loc = field(default=Loc(1, 1), compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        return _get(self.params, name, default)


@dataclass(frozen=True)
class Training:
    epochs: int | HPO | None = None
    batch_size: int | HPO | None = None
    validation_split: float | HPO | None = None
    search_method: str | None = None
    shuffle: bool | None = None


@dataclass(frozen=True)
class Execution:
    device: str = "auto"


@dataclass(frozen=True)
class Network:
    name: str
    inputs: tuple[Input, ...]
    layers: tuple[Layer, ...]
    loss: str | None = None
    optimizer: Optimizer | None = None
    metrics: tuple[str, ...] = ()
    training: Training = Training()
    execution: Execution = Execution()
    loc: Loc = field(default=Loc(1, 1), compare=False)

    def walk(self) -> Iterator[Layer]:
        for layer in self.layers:
            yield from layer.walk()

    def hpo_params(self) -> list[HPO]:
        """Every hyperparameter this network leaves to a search, in source order."""
        found: list[HPO] = []
        for layer in self.walk():
            for p in layer.params:
                _collect_hpo(p.value, found)
        if self.optimizer:
            for p in self.optimizer.params:
                _collect_hpo(p.value, found)
        for v in (
            self.training.epochs,
            self.training.batch_size,
            self.training.validation_split,
        ):
            _collect_hpo(v, found)
        return found


def _collect_hpo(value: Value, out: list[HPO]) -> None:
    if isinstance(value, HPO):
        out.append(value)
    elif isinstance(value, Schedule):
        for p in value.params:
            _collect_hpo(p.value, out)
    elif isinstance(value, tuple):
        for v in value:
            _collect_hpo(v, out)


@dataclass(frozen=True)
class Research:
    """A `research { metrics { ... } references { paper: "..." } }` block."""

    name: str | None
    metrics: tuple[tuple[str, float], ...] = ()
    references: tuple[str, ...] = ()
    loc: Loc = field(default=Loc(1, 1), compare=False)


@dataclass(frozen=True)
class Program:
    """Everything one source file declares. Most files hold exactly one network."""

    networks: tuple[Network, ...] = ()
    research: tuple[Research, ...] = ()

    @property
    def network(self) -> Network:
        """The file's network; a file with several must be asked by name (`get`)."""
        if len(self.networks) != 1:
            raise ValueError(f"the program declares {len(self.networks)} networks, expected one")
        return self.networks[0]

    def get(self, name: str) -> Network:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(name)


# ---------------------------------------------------------------- JSON
class IRFormatError(ValueError):
    """JSON that is not a valid IR document of a supported version."""


def _loc_json(loc: Loc) -> list[int]:
    return [loc.line, loc.column]


def value_to_json(v: Value) -> Any:
    if isinstance(v, HPO):
        s = v.space
        if isinstance(s, Choice):
            space: dict[str, Any] = {
                "type": "choice",
                "values": [value_to_json(x) for x in s.values],
            }
        elif isinstance(s, Range):
            space = {"type": "range", "start": s.start, "end": s.end, "step": s.step}
        else:
            space = {"type": "log_range", "low": s.low, "high": s.high}
        return {"hpo": space, "name": v.name, "loc": _loc_json(v.loc)}
    if isinstance(v, Schedule):
        return {
            "schedule": v.type,
            "params": _params_json(v.params),
            "loc": _loc_json(v.loc),
        }
    if isinstance(v, tuple):
        return [value_to_json(x) for x in v]
    return v


def _params_json(params: tuple[Param, ...]) -> list[dict[str, Any]]:
    return [
        {"name": p.name, "value": value_to_json(p.value), "loc": _loc_json(p.loc)} for p in params
    ]


def _layer_json(layer: Layer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": layer.type,
        "name": layer.name,
        "params": _params_json(layer.params),
        "loc": _loc_json(layer.loc),
    }
    if layer.sublayers:
        out["sublayers"] = [_layer_json(s) for s in layer.sublayers]
    if layer.wrapped is not None:
        out["wrapped"] = _layer_json(layer.wrapped)
    if layer.device is not None:
        out["device"] = layer.device
    if layer.macro is not None:
        out["macro"] = layer.macro
    return out


def network_to_json(n: Network) -> dict[str, Any]:
    t = n.training
    return {
        "name": n.name,
        "loc": _loc_json(n.loc),
        "inputs": [
            {"name": i.name, "shape": list(i.shape), "loc": _loc_json(i.loc)} for i in n.inputs
        ],
        "layers": [_layer_json(layer) for layer in n.layers],
        "loss": n.loss,
        "optimizer": None
        if n.optimizer is None
        else {
            "type": n.optimizer.type,
            "params": _params_json(n.optimizer.params),
            "loc": _loc_json(n.optimizer.loc),
        },
        "metrics": list(n.metrics),
        "training": {
            "epochs": value_to_json(t.epochs),
            "batch_size": value_to_json(t.batch_size),
            "validation_split": value_to_json(t.validation_split),
            "search_method": t.search_method,
            "shuffle": t.shuffle,
        },
        "execution": {"device": n.execution.device},
    }


def program_to_json(p: Program) -> dict[str, Any]:
    return {
        "ir_version": IR_VERSION,
        "networks": [network_to_json(n) for n in p.networks],
        "research": [
            {
                "name": r.name,
                "metrics": {k: v for k, v in r.metrics},
                "references": list(r.references),
                "loc": _loc_json(r.loc),
            }
            for r in p.research
        ],
    }


def dumps(p: Program, indent: int | None = 2) -> str:
    return json.dumps(program_to_json(p), indent=indent, allow_nan=False)


# -- decoding: strict, so a stored document that was tampered with or written by a
#    newer version fails loudly instead of becoming a half-right network.
def _loc(raw: Any) -> Loc:
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
    ):
        raise IRFormatError(f"bad location {raw!r}")
    return Loc(raw[0], raw[1])


def _num(raw: Any, what: str) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise IRFormatError(f"{what} must be a finite number, got {raw!r}")
    return raw


def value_from_json(raw: Any) -> Value:
    if raw is None or isinstance(raw, bool | int | str):
        return raw
    if isinstance(raw, float):
        return _num(raw, "value")
    if isinstance(raw, list):
        return tuple(value_from_json(x) for x in raw)
    if isinstance(raw, dict) and "hpo" in raw:
        s = raw["hpo"]
        kind = s.get("type") if isinstance(s, dict) else None
        if kind == "choice":
            space: HPOSpace = Choice(tuple(value_from_json(x) for x in s["values"]))
        elif kind == "range":
            step = s.get("step")
            space = Range(
                _num(s["start"], "range start"),
                _num(s["end"], "range end"),
                None if step is None else _num(step, "range step"),
            )
        elif kind == "log_range":
            space = LogRange(_num(s["low"], "log_range low"), _num(s["high"], "log_range high"))
        else:
            raise IRFormatError(f"unknown HPO space {s!r}")
        return HPO(space, str(raw["name"]), _loc(raw["loc"]))
    if isinstance(raw, dict) and "schedule" in raw:
        return Schedule(str(raw["schedule"]), _params_from(raw["params"]), _loc(raw["loc"]))
    raise IRFormatError(f"unknown value {raw!r}")


def _params_from(raw: Any) -> tuple[Param, ...]:
    if not isinstance(raw, list):
        raise IRFormatError("params must be a list")
    return tuple(Param(str(p["name"]), value_from_json(p["value"]), _loc(p["loc"])) for p in raw)


def _layer_from(raw: dict[str, Any]) -> Layer:
    return Layer(
        type=str(raw["type"]),
        name=str(raw["name"]),
        params=_params_from(raw.get("params", [])),
        sublayers=tuple(_layer_from(s) for s in raw.get("sublayers", [])),
        wrapped=_layer_from(raw["wrapped"]) if raw.get("wrapped") else None,
        device=raw.get("device"),
        macro=raw.get("macro"),
        loc=_loc(raw["loc"]),
    )


def _opt_value(raw: Any) -> Any:
    return value_from_json(raw) if raw is not None else None


def network_from_json(raw: dict[str, Any]) -> Network:
    t = raw.get("training", {})
    opt = raw.get("optimizer")
    return Network(
        name=str(raw["name"]),
        inputs=tuple(
            Input(str(i["name"]), tuple(i["shape"]), _loc(i["loc"])) for i in raw["inputs"]
        ),
        layers=tuple(_layer_from(layer) for layer in raw["layers"]),
        loss=raw.get("loss"),
        optimizer=None
        if opt is None
        else Optimizer(str(opt["type"]), _params_from(opt["params"]), _loc(opt["loc"])),
        metrics=tuple(raw.get("metrics", [])),
        training=Training(
            epochs=_opt_value(t.get("epochs")),
            batch_size=_opt_value(t.get("batch_size")),
            validation_split=_opt_value(t.get("validation_split")),
            search_method=t.get("search_method"),
            shuffle=t.get("shuffle"),
        ),
        execution=Execution(device=str(raw.get("execution", {}).get("device", "auto"))),
        loc=_loc(raw["loc"]),
    )


def program_from_json(raw: Any) -> Program:
    if not isinstance(raw, dict):
        raise IRFormatError("an IR document is a JSON object")
    version = raw.get("ir_version")
    if version != IR_VERSION:
        raise IRFormatError(f"unsupported ir_version {version!r} (this library reads {IR_VERSION})")
    try:
        return Program(
            networks=tuple(network_from_json(n) for n in raw.get("networks", [])),
            research=tuple(
                Research(
                    name=r.get("name"),
                    metrics=tuple((str(k), float(v)) for k, v in r.get("metrics", {}).items()),
                    references=tuple(str(x) for x in r.get("references", [])),
                    loc=_loc(r["loc"]),
                )
                for r in raw.get("research", [])
            ),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise IRFormatError(f"malformed IR document: {exc!r}") from exc


def loads(text: str) -> Program:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IRFormatError(f"not JSON: {exc}") from exc
    return program_from_json(raw)
