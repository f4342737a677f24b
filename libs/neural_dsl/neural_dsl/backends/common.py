"""What every backend shares: constructor trees, their rendering as code, and errors.

A backend lowers the IR to `Ctor` trees: "call this constructor with these literal
arguments". The live builder instantiates them; the code generator renders them with
`repr` for every literal. Both read the same tree, so generated code and live models
have the same architecture, and no string reaches generated code unquoted.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from ..diagnostics import Diagnostic, DSLError, Loc, Severity
from ..ir import Layer, Network, Schedule


@dataclass(frozen=True)
class Ctor:
    fn: str  # a name in the backend's namespace, possibly dotted (`layers.Dense`)
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def ctor(fn: str, *args: Any, **kwargs: Any) -> Ctor:
    return Ctor(fn, args, tuple(kwargs.items()))


def render(v: Any) -> str:
    """Python source for a Ctor tree; literals only through repr."""
    if isinstance(v, Ctor):
        parts = [render(a) for a in v.args] + [f"{k}={render(x)}" for k, x in v.kwargs]
        return f"{v.fn}({', '.join(parts)})"
    if isinstance(v, list):
        return "[" + ", ".join(render(x) for x in v) + "]"
    if isinstance(v, tuple):
        inner = ", ".join(render(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("non-finite literal")
    if v is None or isinstance(v, bool | int | float | str):
        return repr(v)
    raise TypeError(f"cannot render {type(v).__name__}")


def instantiate(v: Any, namespace: Mapping[str, Any]) -> Any:
    if isinstance(v, Ctor):
        head, *rest = v.fn.split(".")
        fn = namespace[head]
        for part in rest:
            fn = getattr(fn, part)
        return fn(
            *(instantiate(a, namespace) for a in v.args),
            **{k: instantiate(x, namespace) for k, x in v.kwargs},
        )
    if isinstance(v, list):
        return [instantiate(x, namespace) for x in v]
    if isinstance(v, tuple):
        return tuple(instantiate(x, namespace) for x in v)
    return v


def used_names(v: Any, into: set[str] | None = None) -> set[str]:
    """Every constructor name a tree uses (to copy only the helpers it needs)."""
    into = set() if into is None else into
    if isinstance(v, Ctor):
        into.add(v.fn.split(".")[0])
        for a in (*v.args, *(x for _, x in v.kwargs)):
            used_names(a, into)
    elif isinstance(v, list | tuple):
        for x in v:
            used_names(x, into)
    return into


def helper_source(runtime_file: str, names: set[str]) -> str:
    return _helper_source(runtime_file, frozenset(names))


@cache
def _helper_source(runtime_file: str, names: frozenset[str]) -> str:
    """The source of the top-level classes, functions and constants of a runtime file that
    `names` need (following references between them), in file order.

    Read as text with `ast`, so generating code does not import the framework."""
    blocks = _blocks(runtime_file)
    wanted: set[str] = set()
    todo = [n for n in names if n in blocks]
    while todo:
        n = todo.pop()
        if n not in wanted:
            wanted.add(n)
            todo += [m for m in blocks if m not in wanted and _mentions(blocks[n], m)]
    return "\n\n\n".join(blocks[n] for n in blocks if n in wanted) + "\n"


@cache
def _blocks(runtime_file: str) -> dict[str, str]:
    """Top-level definitions of a runtime file by name, in file order (parsed once)."""
    text = resources.files("neural_dsl.runtime").joinpath(runtime_file).read_text("utf-8")
    blocks: dict[str, str] = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        segment = ast.get_source_segment(text, node)
        assert segment is not None
        blocks[name] = segment
    return blocks


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def first_layer(network: Network, input_name: str) -> Layer | None:
    """The first layer that input `input_name` meets (in its branch, or the first layer)."""
    for layer in network.layers:
        if layer.type == "Branch":
            if layer.get("input") == input_name and layer.sublayers:
                return layer.sublayers[0]
        else:
            return layer
    return None


def unsupported(layer: Layer, backend: str, why: str = "") -> DSLError:
    detail = f": {why}" if why else ""
    return DSLError(
        [
            Diagnostic(
                f"{layer.type} (line {layer.loc.line}) is not supported by the {backend} "
                f"backend{detail}",
                layer.loc,
                Severity.ERROR,
                "backend",
            )
        ]
    )


def backend_error(message: str, loc: Loc) -> DSLError:
    return DSLError([Diagnostic(message, loc, Severity.ERROR, "backend")])


# ---------------------------------------------------------------- shared by generators
_RESERVED = {
    "self",
    "torch",
    "nn",
    "F",
    "math",
    "warnings",
    "keras",
    "layers",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "loss_fn",
    "annotations",
}


def python_name(name: str) -> str:
    """An identifier from a DSL name (already [A-Za-z_][A-Za-z0-9_]*) that shadows nothing."""
    ok = name.isidentifier() and not keyword.iskeyword(name) and name not in _RESERVED
    return name if ok else f"{name}_" if name.isidentifier() else "Network"


def settings(network: Network) -> dict[str, Any]:
    """The loss, optimizer and training settings as plain literals."""

    def lit(v: Any) -> Any:
        if isinstance(v, Schedule):
            return {"type": v.type, "params": {p.name: lit(p.value) for p in v.params}}
        return v

    opt = network.optimizer
    t = network.training
    return {
        "loss": network.loss,
        "optimizer": {"type": opt.type, "params": {p.name: lit(p.value) for p in opt.params}}
        if opt
        else {"type": "Adam", "params": {}},
        "metrics": list(network.metrics),
        "training": {
            k: getattr(t, k)
            for k in ("epochs", "batch_size", "validation_split", "shuffle")
            if getattr(t, k) is not None
        },
        "device": network.execution.device,
    }
