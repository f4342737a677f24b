"""Shape propagation: the output shape and trainable-parameter count after every layer.

Conventions (the DSL's, stated once):
- Channels last, as the DSL's inputs are written: images are (height, width, channels),
  sequences are (steps, features), volumes are (depth, height, width, channels).
- Shapes here are per example; a leading `None` in `input:` is the batch dimension and
  is shown again as `None` at the front of every reported shape.
- A dimension that depends on an `HPO(...)` value, or on an input dimension written as
  `None`, is unknown (`None`), and so is a parameter count that depends on it.
- Parameter counts are trainable parameters, as Keras counts them (BatchNormalization:
  2 per channel; its moving statistics are not trainable). Recurrent layers follow
  Keras (one bias per gate; GRU with reset_after=True).
- Dense and Output act on the last axis of an input of any rank, as Keras' Dense and torch's
  Linear do: on an (h, w, c) image, Dense(n) maps each pixel's c channels to n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import catalog
from .diagnostics import Collector, Loc
from .ir import HPO, Layer, Network
from .limits import Limits

Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class LayerShape:
    name: str
    type: str
    input_shape: Shape
    output_shape: Shape
    params: int | None
    sublayers: tuple[LayerShape, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "output_shape": [None, *self.output_shape],
            "params": self.params,
        }
        if self.sublayers:
            out["sublayers"] = [s.to_json() for s in self.sublayers]
        return out


@dataclass(frozen=True)
class ShapeReport:
    network: str
    inputs: tuple[tuple[str, Shape], ...]
    layers: tuple[LayerShape, ...]
    output_shape: Shape
    total_params: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "network": self.network,
            "convention": "channels_last; shapes include the batch dimension as null",
            "inputs": {name: [None, *shape] for name, shape in self.inputs},
            "layers": [layer.to_json() for layer in self.layers],
            "output_shape": [None, *self.output_shape],
            "total_params": self.total_params,
        }


class ShapeError(Exception):
    def __init__(self, message: str, loc: Loc) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


def fmt(shape: Sequence[int | None]) -> str:
    inner = ", ".join("None" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _num(layer: Layer, name: str, default: Any = None) -> Any:
    """A parameter's value, with None for one that an HPO search will choose."""
    v = layer.get(name, default)
    return None if isinstance(v, HPO) else v


def _size(layer: Layer, name: str, rank: int, default: Any) -> tuple[int | None, ...]:
    v = layer.get(name, default)
    if isinstance(v, HPO):
        return (None,) * rank
    if isinstance(v, int):
        return (v,) * rank
    return tuple(v)


def _mul(*xs: int | None) -> int | None:
    return None if any(x is None for x in xs) else math.prod(xs)  # type: ignore[arg-type]


def _add(*xs: int | None) -> int | None:
    return None if any(x is None for x in xs) else sum(xs)  # type: ignore[arg-type]


def _loc(layer: Layer, param: str) -> Loc:
    p = layer.param(param)
    return p.loc if p is not None else layer.loc


class _Propagator:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    # ---------------------------------------------------------- sequences
    def sequence(
        self,
        layers: Sequence[Layer],
        shape: Shape | None,
        inputs: dict[str, Shape],
        allow_branches: bool,
    ) -> tuple[Shape, list[LayerShape]]:
        pending: list[Shape] = []
        results: list[LayerShape] = []
        for layer in layers:
            if layer.type == catalog.BRANCH:
                if not allow_branches:
                    raise ShapeError(
                        "branches (`name: { ... }`) belong at the top level", layer.loc
                    )
                src = layer.get("input")
                if src not in inputs:
                    raise ShapeError(
                        f"no input named '{src}' (inputs: {', '.join(inputs)})", layer.loc
                    )
                out, subs = self.sequence(layer.sublayers, inputs[src], inputs, False)
                pending.append(out)
                results.append(
                    LayerShape(
                        layer.name,
                        layer.type,
                        inputs[src],
                        out,
                        _add(*(s.params for s in subs)),
                        tuple(subs),
                    )
                )
                continue
            spec = catalog.LAYERS[layer.type]
            if spec.family == "merge":
                if len(pending) < 2:
                    raise ShapeError(
                        f"{layer.type} merges branches: put it after two or more "
                        "`name: { ... }` branches",
                        layer.loc,
                    )
                out, params = self.merge(layer, pending)
                results.append(LayerShape(layer.name, layer.type, pending[0], out, params))
                pending, shape = [], out
                continue
            if pending:
                raise ShapeError(
                    "the branches above must be merged (Concatenate, Add, ...) "
                    f"before {layer.type}",
                    layer.loc,
                )
            if shape is None:
                raise ShapeError(
                    "this network has several inputs: start with one `name: { ... }` branch each",
                    layer.loc,
                )
            out, params, subs = self.layer(layer, shape, inputs)
            results.append(LayerShape(layer.name, layer.type, shape, out, params, tuple(subs)))
            shape = out
        if pending:
            raise ShapeError(
                "the network ends with unmerged branches: add Concatenate() or Add()",
                layers[-1].loc,
            )
        assert shape is not None
        return shape, results

    # ---------------------------------------------------------- merge
    def merge(self, layer: Layer, shapes: list[Shape]) -> tuple[Shape, int | None]:
        if layer.type == "Subtract" and len(shapes) != 2:
            raise ShapeError("Subtract takes exactly two branches", layer.loc)
        if layer.type != "Concatenate":
            first = shapes[0]
            for s in shapes[1:]:
                if len(s) != len(first) or any(
                    a is not None and b is not None and a != b
                    for a, b in zip(s, first, strict=True)
                ):
                    raise ShapeError(
                        f"{layer.type} needs branches of one shape, got "
                        + " and ".join(fmt(x) for x in shapes),
                        layer.loc,
                    )
            return first, 0
        rank = len(shapes[0])
        axis = _num(layer, "axis", -1)
        # Like Keras, axis counts the batch dimension: axis=1 is the first per-example axis.
        ax = axis - 1 if axis > 0 else rank + axis
        if any(len(s) != rank for s in shapes) or not 0 <= ax < rank:
            raise ShapeError(
                "Concatenate needs branches of one rank and a valid axis, got "
                + " and ".join(fmt(x) for x in shapes),
                layer.loc,
            )
        for i in range(rank):
            if i != ax and len({s[i] for s in shapes if s[i] is not None}) > 1:
                raise ShapeError(
                    f"Concatenate on axis {axis}: the other dimensions differ: "
                    + " and ".join(fmt(x) for x in shapes),
                    layer.loc,
                )
        out = list(shapes[0])
        out[ax] = _add(*(s[ax] for s in shapes))
        return tuple(out), 0

    # ---------------------------------------------------------- one layer
    def layer(
        self, layer: Layer, shape: Shape, inputs: dict[str, Shape]
    ) -> tuple[Shape, int | None, list[LayerShape]]:
        t = layer.type
        spec = catalog.LAYERS[t]
        rank = len(shape)

        def need(ranks: Sequence[int], what: str) -> None:
            if rank not in ranks:
                raise ShapeError(f"{t} expects {what} input, got {fmt(shape)}", layer.loc)

        if t in ("Dense", "Output"):
            units = _num(layer, "units")
            bias = units if layer.get("use_bias", True) else 0
            return (*shape[:-1], units), _add(_mul(shape[-1], units), bias), []
        if t in ("Dropout", "GaussianNoise", "Activation"):
            return shape, 0, []
        if t == "Flatten":
            return (_mul(*shape),), 0, []
        if t == "Reshape":
            target = layer.get("target_shape")
            total, want = _mul(*shape), math.prod(target)
            if total is not None and total != want:
                raise ShapeError(
                    f"Reshape to {fmt(target)} needs {want} values, the input {fmt(shape)} "
                    f"has {total}",
                    _loc(layer, "target_shape"),
                )
            return tuple(target), 0, []
        if t == "CustomShape":
            return tuple(layer.get("custom_dims")), 0, []
        if t == "Lambda":
            raise ShapeError(
                "Lambda holds code as text, which the platform never runs, so its output "
                "shape is unknown; declare it with CustomShape or use a built-in layer",
                layer.loc,
            )
        if spec.family == "conv":
            return self.conv(layer, shape, spec.spatial_rank)
        if t.startswith(("MaxPooling", "AveragePooling")):
            n = spec.spatial_rank
            need((n + 1,), _SPATIAL[n])
            pool = _size(layer, "pool_size", n, 2)
            strides = _size(layer, "strides", n, layer.get("pool_size", 2))
            pad = layer.get("padding", "valid")
            dims = tuple(
                _window(d, k, s, pad, 1, layer, "pool_size", shape)
                for d, k, s in zip(shape[:-1], pool, strides, strict=True)
            )
            return (*dims, shape[-1]), 0, []
        if t.startswith("Global"):
            n = spec.spatial_rank
            need((n + 1,), _SPATIAL[n])
            if layer.get("keepdims", False):
                return (*(1,) * n, shape[-1]), 0, []
            return (shape[-1],), 0, []
        if t in ("SimpleRNN", "LSTM", "GRU", "SimpleRNNDropoutWrapper"):
            need((2,), "(steps, features)")
            units = _num(layer, "units")
            params = _rnn_params(t, shape[-1], units, layer.get("use_bias", True))
            out = (shape[0], units) if layer.get("return_sequences", False) else (units,)
            return out, params, []
        if t in ("SimpleRNNCell", "LSTMCell", "GRUCell"):
            need((1,), "(features)")
            units = _num(layer, "units")
            return (units,), _rnn_params(t.removesuffix("Cell"), shape[-1], units, True), []
        if t == "Bidirectional":
            inner = layer.wrapped
            assert inner is not None
            if inner.type not in ("SimpleRNN", "LSTM", "GRU", "SimpleRNNDropoutWrapper"):
                raise ShapeError(
                    f"Bidirectional wraps a recurrent layer, not {inner.type}", inner.loc
                )
            out, params, _ = self.layer(inner, shape, inputs)
            mode = layer.get("merge_mode", "concat")
            last = _mul(out[-1], 2) if mode == "concat" else out[-1]
            return (*out[:-1], last), _mul(params, 2), []
        if t == "TimeDistributed":
            if rank < 2:
                raise ShapeError(
                    f"TimeDistributed expects (steps, ...) input, got {fmt(shape)}", layer.loc
                )
            assert layer.wrapped is not None
            step_shape, params, _ = self.layer(layer.wrapped, shape[1:], inputs)
            step_shape, subs = self.sequence(layer.sublayers, step_shape, inputs, False)
            total = _add(params, *(s.params for s in subs))
            return (shape[0], *step_shape), total, subs
        if t == "Attention":
            need((2,), "(steps, features)")
            return shape, 1 if layer.get("use_scale", False) else 0, []
        if t == "MultiHeadAttention":
            if rank < 2:
                raise ShapeError(
                    f"{t} expects (steps, features) input, got {fmt(shape)}", layer.loc
                )
            d, heads = shape[-1], _num(layer, "num_heads")
            kd = _num(layer, "key_dim") if layer.get("key_dim") is not None else _div(d, heads)
            inner = _mul(heads, kd)
            params = _add(_mul(3, _add(_mul(d, inner), inner)), _mul(inner, d), d)
            return shape, params, []
        if t in ("TransformerEncoder", "TransformerDecoder"):
            return self.transformer(layer, shape, inputs)
        if t == "GraphAttention":
            need((2,), "(nodes, features)")
            heads = _num(layer, "num_heads")
            units = _num(layer, "units") if layer.get("units") is not None else shape[-1]
            params = _mul(heads, _add(_mul(shape[-1], units), _mul(2, units)))
            return (shape[0], _mul(heads, units)), params, []
        if t == "BatchNormalization":
            return shape, _norm_params(layer, shape[-1]), []
        if t == "LayerNormalization":
            return shape, _norm_params(layer, shape[-1]), []
        if t == "InstanceNormalization":
            if rank < 2:
                raise ShapeError(
                    f"{t} expects (..., channels) input with a spatial axis, got {fmt(shape)}",
                    layer.loc,
                )
            return shape, _norm_params(layer, shape[-1]), []
        if t == "GroupNormalization":
            groups, c = _num(layer, "groups", 32), shape[-1]
            if groups is not None and c is not None and c % groups:
                raise ShapeError(
                    f"GroupNormalization: {c} channels cannot be split into {groups} groups",
                    _loc(layer, "groups"),
                )
            return shape, _norm_params(layer, c), []
        if t == "Embedding":
            if rank != 1:
                raise ShapeError(
                    f"Embedding expects a sequence of token ids (steps,), got {fmt(shape)}; "
                    "declare the input as (steps) when an Embedding comes first",
                    layer.loc,
                )
            out_dim = _num(layer, "output_dim")
            return (shape[0], out_dim), _mul(_num(layer, "input_dim"), out_dim), []
        if t in ("ResidualConnection", "Residual"):
            return self.residual(layer, shape, inputs)
        if t == "Inception":
            need((3,), "(height, width, channels)")
            c = shape[-1]
            f1, f3, f5, fp = (
                _num(layer, n, spec.param(n).default)  # type: ignore[union-attr]
                for n in ("filters_1x1", "filters_3x3", "filters_5x5", "filters_pool")
            )
            params = _add(_mul(c, f1), f1, _mul(9, c, f3), f3, _mul(25, c, f5), f5, _mul(c, fp), fp)
            return (shape[0], shape[1], _add(f1, f3, f5, fp)), params, []
        if t == "SqueezeExcitation":
            if rank < 2:
                raise ShapeError(
                    f"{t} expects (..., channels) input with a spatial axis, got {fmt(shape)}",
                    layer.loc,
                )
            c, ratio = shape[-1], _num(layer, "ratio", 16)
            r = None if c is None or ratio is None else max(1, c // ratio)
            return shape, _add(_mul(c, r), r, _mul(r, c), c), []
        if t == "CapsuleLayer":
            need((2,), "(capsules, capsule_dim)")
            nc, dc = _num(layer, "num_capsules", 10), _num(layer, "dim_capsules", 16)
            return (nc, dc), _mul(shape[0], nc, shape[1], dc), []
        if t == "QuantumLayer":
            q, n_layers = _num(layer, "n_qubits", 4), _num(layer, "n_layers", 1)
            if rank != 1 or (q is not None and shape[0] is not None and shape[0] != q):
                raise ShapeError(
                    f"QuantumLayer with {q} qubits expects ({q},) input, got {fmt(shape)}",
                    layer.loc,
                )
            return (q,), _mul(n_layers, q, 3), []
        raise ShapeError(f"no shape rule for {t}", layer.loc)  # a catalog entry without a rule

    def conv(self, layer: Layer, shape: Shape, n: int) -> tuple[Shape, int | None, list]:
        t = layer.type
        if len(shape) != n + 1:
            raise ShapeError(f"{t} expects {_SPATIAL[n]} input, got {fmt(shape)}", layer.loc)
        c = shape[-1]
        k = _size(layer, "kernel_size", n, 1)
        s = _size(layer, "strides", n, 1)
        dil = _size(layer, "dilation_rate", n, 1)
        pad = layer.get("padding", "valid")
        bias = layer.get("use_bias", True)
        if t == "Conv2DTranspose":
            # Keras: the dilated kernel spans k + (k-1)(dil-1); valid padding adds what it
            # sticks out past the stride.
            dims = tuple(
                None
                if d is None or kk is None or ss is None or dd is None
                else (d * ss if pad == "same" else d * ss + max(kk + (kk - 1) * (dd - 1) - ss, 0))
                for d, kk, ss, dd in zip(shape[:-1], k, s, dil, strict=True)
            )
        else:
            dims = tuple(
                _window(d, kk, ss, pad, dd, layer, "kernel_size", shape)
                for d, kk, ss, dd in zip(shape[:-1], k, s, dil, strict=True)
            )
        kprod = _mul(*k)
        if t == "DepthwiseConv2D":
            out_c = _mul(c, _num(layer, "depth_multiplier", 1))
            return (*dims, out_c), _add(_mul(kprod, out_c), out_c if bias else 0), []
        filters = _num(layer, "filters")
        if t == "SeparableConv2D":
            dm = _num(layer, "depth_multiplier", 1)
            params = _add(_mul(kprod, c, dm), _mul(c, dm, filters), filters if bias else 0)
            return (*dims, filters), params, []
        return (*dims, filters), _add(_mul(kprod, c, filters), filters if bias else 0), []

    def transformer(
        self, layer: Layer, shape: Shape, inputs: dict[str, Shape]
    ) -> tuple[Shape, int | None, list]:
        t = layer.type
        if len(shape) != 2:
            raise ShapeError(f"{t} expects (steps, features) input, got {fmt(shape)}", layer.loc)
        d, heads, ff = shape[-1], _num(layer, "num_heads"), _num(layer, "ff_dim")
        if d is not None and heads is not None and d % heads:
            raise ShapeError(
                f"{t}: {d} features cannot be split across {heads} heads",
                _loc(layer, "num_heads"),
            )
        attention = _add(_mul(4, d, d), _mul(4, d))
        norms = _mul(4, d)
        if layer.sublayers:
            out, subs = self.sequence(layer.sublayers, shape, inputs, False)
            if out != shape:
                raise ShapeError(
                    f"the block inside {t} replaces its feed-forward part and must keep the "
                    f"shape {fmt(shape)}, but it ends with {fmt(out)}",
                    layer.sublayers[-1].loc,
                )
            return shape, _add(attention, norms, *(s.params for s in subs)), subs
        ffn = _add(_mul(d, ff), ff, _mul(ff, d), d)
        return shape, _add(attention, ffn, norms), []

    def residual(
        self, layer: Layer, shape: Shape, inputs: dict[str, Shape]
    ) -> tuple[Shape, int | None, list]:
        if not layer.sublayers:
            return shape, 0, []
        out, subs = self.sequence(layer.sublayers, shape, inputs, False)
        params = _add(*(s.params for s in subs))
        if out == shape:
            return out, params, subs
        # The shortcut needs a projection: a 1x1 convolution (or Dense for flat inputs)
        # with the stride that brings the input to the block's output size.
        if len(out) != len(shape):
            raise ShapeError(
                f"{layer.type}: its block maps {fmt(shape)} to {fmt(out)}, a different rank, so "
                "the shortcut cannot be added",
                layer.loc,
            )
        for a, b in zip(shape[:-1], out[:-1], strict=True):
            # A 1x1 convolution with stride s maps a to ceil(a / s); s = ceil(a / b) is the
            # only stride that can give b.
            if a is not None and b is not None and -(-a // -(-a // b)) != b:
                raise ShapeError(
                    f"{layer.type}: its block maps {fmt(shape)} to {fmt(out)}; no strided "
                    "projection of the shortcut fits",
                    layer.loc,
                )
        projection = _add(_mul(shape[-1], out[-1]), out[-1])
        return out, _add(params, projection), subs


_SPATIAL = {
    1: "(steps, channels)",
    2: "(height, width, channels)",
    3: "(depth, height, width, channels)",
}


def _window(
    d: int | None,
    k: int | None,
    s: int | None,
    pad: str,
    dil: int | None,
    layer: Layer,
    param: str,
    shape: Shape,
) -> int | None:
    if d is None or k is None or s is None or dil is None:
        return None
    if pad == "same":
        return -(-d // s)
    span = dil * (k - 1) + 1
    if pad == "causal":
        return -(-d // s)
    if span > d:
        raise ShapeError(
            f"{layer.type} {param} {k} (spanning {span}) is larger than its input {fmt(shape)}",
            _loc(layer, param),
        )
    return (d - span) // s + 1


def _div(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else max(1, a // b)


def _rnn_params(t: str, features: int | None, units: int | None, bias: bool) -> int | None:
    gates = {"SimpleRNN": 1, "SimpleRNNDropoutWrapper": 1, "LSTM": 4, "GRU": 3}[t]
    per_gate = _add(_mul(units, _add(features, units)), units if bias else 0)
    if t == "GRU" and bias:  # reset_after=True keeps a second (recurrent) bias
        per_gate = _add(per_gate, units)
    return _mul(gates, per_gate)


def _norm_params(layer: Layer, channels: int | None) -> int | None:
    per = int(layer.get("center", True)) + int(layer.get("scale", True))
    return _mul(per, channels)


def propagate(
    network: Network, limits: Limits | None = None
) -> tuple[ShapeReport | None, Collector]:
    """Shapes for every layer, or a diagnostic at the first layer whose input does not fit."""
    limits = limits or Limits()
    out = Collector("shape")
    inputs = {i.name: i.sample_shape for i in network.inputs}
    if not inputs:
        return None, out
    start = next(iter(inputs.values())) if len(inputs) == 1 else None
    try:
        final, layers = _Propagator(limits).sequence(network.layers, start, inputs, True)
    except ShapeError as exc:
        out.error(exc.message, exc.loc)
        return None, out
    total = _add(*(lay.params for lay in layers)) if layers else 0
    running = 0
    for lay in layers:
        running += lay.params or 0
        if running > limits.max_parameters:
            out.error(
                f"the network has more than {limits.max_parameters:,} parameters "
                f"({running:,} by this layer)",
                next(la.loc for la in network.layers if la.name == lay.name),
            )
            return None, out
    report = ShapeReport(network.name, tuple(inputs.items()), tuple(layers), final, total)
    return report, out
