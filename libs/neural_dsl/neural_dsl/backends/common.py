"""What every backend shares: constructor trees, their rendering as code, and errors.

A backend lowers the IR to `Ctor` trees: "call this constructor with these literal
arguments". The live builder instantiates them; the code generator renders them with
`repr` for every literal. Both read the same tree, so generated code and live models
have the same architecture, and no string reaches generated code unquoted.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..diagnostics import Diagnostic, DSLError, Loc, Severity
from ..ir import Layer


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


def helper_source(module: ModuleType, names: set[str]) -> str:
    """The source of the module-level classes/functions in `names` (and what they use)."""
    members = {
        n: obj
        for n, obj in vars(module).items()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__
    }
    src = {n: inspect.getsource(obj) for n, obj in members.items()}
    wanted: set[str] = set()
    todo = [n for n in names if n in members]
    while todo:  # follow references between helpers
        n = todo.pop()
        if n in wanted:
            continue
        wanted.add(n)
        todo += [m for m in members if m not in wanted and _mentions(src[n], m)]
    # keep the module's own order; module-level tables (like _ACTIVATIONS) come along by name
    order = [n for n in members if n in wanted]
    text = inspect.getsource(module)
    consts = [
        line_block
        for line_block in _top_level_assignments(text)
        if any(_mentions(src[n], line_block.split("=")[0].strip()) for n in order)
    ]
    return "\n\n".join(consts + [src[n].rstrip() for n in order]) + "\n"


def _mentions(text: str, name: str) -> bool:
    import re

    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def _top_level_assignments(text: str) -> list[str]:
    """Module-level `NAME = ...` blocks (a statement and its indented continuation)."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line[:1].isalpha() or line[:1] == "_":
            head = line.split("=")[0].strip()
            if "=" in line and head.isidentifier() and not line.startswith(("def ", "class ")):
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", ")", "}", "]"))):
                    j += 1
                blocks.append("\n".join(lines[i:j]))
                i = j
                continue
        i += 1
    return blocks


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
