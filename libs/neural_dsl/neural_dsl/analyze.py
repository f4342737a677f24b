"""Raw syntax -> IR: name positional arguments, expand macros and `* N`, validate every value.

Each problem becomes a diagnostic at the token that caused it; analysis goes on
after an error so one run reports as much as it can, then raises DSLError. The work is
split by job in `neural_dsl.analysis`: values, kinds, layers and macros, sections.
"""

from __future__ import annotations

from .analysis.layers import LayerBuilder, define_macros
from .analysis.sections import NetworkBuilder, build_research
from .analysis.values import Context, TooBig, suggest
from .diagnostics import Collector, Loc
from .ir import Layer, Network, Program, Value
from .limits import Limits
from .syntax import RawBranch, RawDefine, RawLayer, RawProgram


def analyze(raw: RawProgram, limits: Limits | None = None) -> tuple[Program, Collector]:
    out = Collector("semantic")
    ctx = Context(out, limits or Limits())
    networks: list[Network] = []
    try:
        define_macros(raw.defines, ctx)
        seen: dict[str, Loc] = {}
        for rn in raw.networks:
            if rn.name in seen:
                first = seen[rn.name]
                out.error(
                    f"network '{rn.name}' is declared twice (first at line {first.line})", rn.loc
                )
            seen.setdefault(rn.name, rn.loc)
            net_ctx = Context(out, ctx.limits, ctx.macros)
            net = NetworkBuilder(net_ctx).build(rn)
            if net is not None:
                networks.append(net)
    except TooBig:
        pass
    if not raw.networks and not raw.defines and not raw.research:
        out.error("the program declares no network", Loc(1, 1))
    research = [build_research(r, out) for r in raw.research]
    out.items = list(dict.fromkeys(out.items))  # a macro used twice reports its errors once
    return Program(tuple(networks), tuple(research)), out


def analyze_layer(
    raw: RawLayer | RawBranch, defines: list[RawDefine], limits: Limits | None = None
) -> tuple[list[Layer], Collector]:
    """One layer on its own (with the macros of a prelude), as the `layer` start rule gives it."""
    out = Collector("semantic")
    ctx = Context(out, limits or Limits())
    layers: list[Layer] = []
    try:
        define_macros(defines, ctx)
        layers = LayerBuilder(ctx).item(raw, "", ())
    except TooBig:
        pass
    out.items = list(dict.fromkeys(out.items))
    return layers, out


__all__ = ["Value", "analyze", "analyze_layer", "suggest"]
