"""Layers and macros: a layer call bound to its parameters (positional names, wrapped layers,
blocks of sublayers), `* N` repetition, macro definitions and their expansion, and the
limits on how far a program may expand."""

from __future__ import annotations

import math
from dataclasses import replace

from .. import catalog
from ..catalog import Kind, LayerSpec
from ..diagnostics import Collector, Loc
from ..ir import Layer, Param
from ..syntax import RawArg, RawBranch, RawDefine, RawLayer
from .kinds import check_device, check_kind
from .values import INVALID, Context, TooBig, plain_value, suggest


def bind_args(
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


class LayerBuilder:
    def __init__(self, ctx: Context) -> None:
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
            raise TooBig

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
        bound = bind_args(item.args or [], spec.positional, spec.name, item.loc, self.out)
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
            if raw is INVALID:
                ok = False
                continue
            value = check_kind(raw, pspec, spec.name, arg.value.loc, self.out)
            if value is INVALID:
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
    return replace(
        layer,
        macro=layer.macro or macro,
        device=device if device is not None else layer.device,
    )


def define_macros(defines: list[RawDefine], ctx: Context) -> None:
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
            LayerBuilder(Context(ctx.out, ctx.limits, ctx.macros)).items(d.body, "", (d.name,))
