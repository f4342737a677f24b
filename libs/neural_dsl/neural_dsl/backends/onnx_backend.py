"""IR -> ONNX directly: an `onnx.ModelProto` built with `onnx.helper`, no framework imported.

    model = to_onnx(network)                       # fresh weights (torch's init scheme)
    model = to_onnx(network, torch_state_dict(m))  # the weights of a live torch model

The graph follows the PyTorch lowering (`torch_backend.plan`): the same constructor trees,
read here as ONNX ops, so parameter names are the torch model's state_dict keys and the
computation (channels-last tensors, transposes only around convolutions, poolings and
recurrent ops) is the one the torch model runs at inference. Inputs are named as the
network declares them, batch first with a dynamic batch dimension "batch"; the one output
is "output" (as the torch exporter writes it).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..diagnostics import DSLError
from ..ir import Network
from ..shapes import ShapeReport
from . import torch_backend
from .common import Ctor, first_layer, unsupported

BACKEND = "onnx"
DEFAULT_OPSET = 18
_WEIGHT = np.dtype("<f4")  # ONNX raw_data is little-endian
# A protobuf message cannot be 2 GiB or more; larger ONNX models keep weights in external files.
MAX_MODEL_BYTES = 2**31 - 1
Shape = tuple[int | None, ...]  # one example's shape (no batch dimension)
Lowered = tuple[str, Shape]  # an output tensor's name and its per-example shape


class UnsupportedLayer(DSLError):
    """A layer (or one of its settings) the direct ONNX lowering does not express."""


class NotExpressible(ValueError):
    """Raised inside the lowering of one layer; becomes that layer's UnsupportedLayer."""


# ---------------------------------------------------------------- weights
def torch_state_dict(module: Any) -> dict[str, np.ndarray]:
    """A live torch module's state_dict as numpy arrays (torch is the caller's, not imported)."""
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


# Fresh weights are drawn in float32 and scaled in place: a float64 draw and its conversion
# would hold three times the weights' memory at once.
def _uniform(bound: float) -> Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]:
    def draw(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        a = rng.random(shape, dtype=np.float32)
        a *= 2 * bound
        a -= bound
        return a

    return draw


def _fill(value: float) -> Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]:
    return lambda rng, shape: np.full(shape, value, np.float32)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


# ---------------------------------------------------------------- the graph under construction
_ACT_OPS = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "elu": "Elu",
    "selu": "Selu",
    "softplus": "Softplus",
    "softsign": "Softsign",
    "exponential": "Exp",
}


class _Graph:
    def __init__(self, state_dict: Mapping[str, Any] | None, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []  # constants: shapes, axes, scalars
        self.params: dict[str, np.ndarray] = {}  # the weights, kept apart (see Lowering.write)
        self.state = state_dict
        self.used: set[str] = set()
        self.rng = np.random.default_rng(seed)
        self.count = 0

    # -- names, constants, parameters
    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: Any, dtype: Any = np.float32, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values: list[int] | tuple[int, ...]) -> str:
        return self.const(list(values), np.int64, "shape")

    def weight(
        self, key: str, shape: tuple[int, ...], init: Callable[..., np.ndarray]
    ) -> np.ndarray:
        """The parameter `key` (a torch state_dict key): from the given weights, or fresh."""
        if self.state is None:
            return np.asarray(init(self.rng, shape), dtype=np.float32)
        if key not in self.state:
            raise ValueError(f"the weights have no {key!r}")
        value = np.asarray(self.state[key], dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"weight {key!r} has shape {value.shape}, expected {shape}")
        self.used.add(key)
        return value

    def param(self, key: str, value: np.ndarray) -> str:
        if key in self.params:
            raise ValueError(f"weight {key!r} given twice")
        self.params[key] = np.ascontiguousarray(value, _WEIGHT)  # a copy only if it must be
        return key

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> Any:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=outs[0], **attrs))
        return outs[0] if n_out == 1 else outs

    # -- common pieces
    def act(self, x: str, name: str | None, alpha: float | None = None) -> str:
        name = name or "linear"
        if name == "linear":
            return x
        if name in _ACT_OPS:
            return self.op(_ACT_OPS[name], [x])
        if name == "leaky_relu":
            return self.op("LeakyRelu", [x], alpha=0.2 if alpha is None else float(alpha))
        if name == "softmax":
            return self.op("Softmax", [x], axis=-1)
        if name == "log_softmax":
            return self.op("LogSoftmax", [x], axis=-1)
        if name in ("swish", "silu"):
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        if name == "gelu":  # exact (erf) GELU; the Gelu op needs opset 20
            erf = self.op("Erf", [self.op("Mul", [x, self.const(1 / math.sqrt(2))])])
            half = self.op("Mul", [x, self.const(0.5)])
            return self.op("Mul", [half, self.op("Add", [erf, self.const(1.0)])])
        if name == "relu6":
            return self.op("Clip", [x, self.const(0.0), self.const(6.0)])
        if name == "hard_sigmoid":  # torch's hardsigmoid: relu6(x + 3) / 6
            return self.op("HardSigmoid", [x], alpha=1 / 6, beta=0.5)
        if name == "mish":
            return self.op("Mul", [x, self.op("Tanh", [self.op("Softplus", [x])])])
        raise NotExpressible(f"activation {name!r}")

    def linear(self, x: str, key: str, n_in: int, n_out: int, bias: bool) -> str:
        """torch nn.Linear on the last axis (weights kept in torch's (out, in) layout)."""
        bound = 1 / math.sqrt(n_in)
        w = self.weight(f"{key}.weight", (n_out, n_in), _uniform(bound))
        y = self.op("MatMul", [x, self.op("Transpose", [self.param(f"{key}.weight", w)])])
        if bias:
            b = self.weight(f"{key}.bias", (n_out,), _uniform(bound))
            y = self.op("Add", [y, self.param(f"{key}.bias", b)])
        return y

    def to_channels_first(self, x: str, rank: int) -> str:
        return self.op("Transpose", [x], perm=[0, rank + 1, *range(1, rank + 1)])

    def to_channels_last(self, x: str, rank: int) -> str:
        return self.op("Transpose", [x], perm=[0, *range(2, rank + 2), 1])


def _same_pads(sizes: Shape, kernel: tuple, strides: tuple, dilation: tuple) -> list[int]:
    """TensorFlow's 'same' padding as ONNX `pads` (all begins, then all ends)."""
    begins, ends = [], []
    for n, k, s, d in zip(sizes, kernel, strides, dilation, strict=True):
        if n is None:
            raise NotExpressible("'same' padding needs static spatial sizes")
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


def _conv_out(n: int | None, k: int, s: int, d: int, pad: int) -> int | None:
    return None if n is None else (n + pad - d * (k - 1) - 1) // s + 1


# ---------------------------------------------------------------- constructor trees -> ops
def _emit(g: _Graph, c: Ctor, key: str, x: str, shape: Shape) -> Lowered:
    """Lower one constructor tree (the torch module at state_dict prefix `key`) applied to
    `x` of per-example shape `shape`; returns the output and its shape."""
    fn = _EMIT.get(c.fn)
    if fn is None:
        raise NotExpressible(f"no ONNX lowering for {c.fn}")
    return fn(g, key, x, shape, *c.args, **dict(c.kwargs))


def _k(key: str, child: str) -> str:
    return f"{key}.{child}" if key else child


def _dense(
    g: _Graph, key: str, x: str, shape: Shape, n_in: int, units: int, act: Any, bias: bool
) -> Lowered:
    y = g.linear(x, _k(key, "linear"), n_in, units, bias)
    return g.act(y, act), (*shape[:-1], units)


def _act(g: _Graph, key: str, x: str, shape: Shape, name: Any, alpha: Any = None) -> Lowered:
    return g.act(x, name, alpha), shape


def _identity(g: _Graph, key: str, x: str, shape: Shape, *_: Any) -> Lowered:
    return x, shape


def _flatten(g: _Graph, key: str, x: str, shape: Shape) -> Lowered:
    n = math.prod(d for d in shape if d is not None) if None not in shape else None
    return g.op("Flatten", [x], axis=1), (n,)


def _reshape(g: _Graph, key: str, x: str, shape: Shape, target: tuple) -> Lowered:
    return g.op("Reshape", [x, g.ints([0, *target])]), tuple(target)


def _conv_inputs(
    g: _Graph,
    key: str,
    x: str,
    rank: int,
    kernel_shape: tuple,
    filters: int,
    bias: bool,
    bound: float,
) -> list[str]:
    """A convolution's inputs: `x` channels-first, its kernel and (with `bias`) one bias per
    output filter, named and initialised as torch's conv module (uniform in +-bound)."""
    w = g.weight(f"{key}.conv.weight", kernel_shape, _uniform(bound))
    ins = [g.to_channels_first(x, rank), g.param(f"{key}.conv.weight", w)]
    if bias:
        b = g.weight(f"{key}.conv.bias", (filters,), _uniform(bound))
        ins.append(g.param(f"{key}.conv.bias", b))
    return ins


def _conv(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    rank: int,
    c_in: int,
    filters: int,
    kernel: tuple,
    strides: tuple,
    dilation: tuple,
    padding: str,
    act: Any,
    bias: bool,
    groups: int = 1,
) -> Lowered:
    spatial = shape[:-1]
    if padding == "same":
        pads = _same_pads(spatial, kernel, strides, dilation)
    elif padding == "causal":
        pads = [(kernel[0] - 1) * dilation[0], 0]
    else:
        pads = [0] * (2 * rank)
    fan_in = c_in // groups * math.prod(kernel)
    bound = 1 / math.sqrt(fan_in)
    ins = _conv_inputs(g, key, x, rank, (filters, c_in // groups, *kernel), filters, bias, bound)
    y = g.op(
        "Conv",
        ins,
        kernel_shape=list(kernel),
        strides=list(strides),
        dilations=list(dilation),
        pads=pads,
        group=groups,
    )
    out = tuple(
        _conv_out(n, k, s, d, pads[i] + pads[i + rank])
        for i, (n, k, s, d) in enumerate(zip(spatial, kernel, strides, dilation, strict=True))
    )
    return g.act(g.to_channels_last(y, rank), act), (*out, filters)


def _separable(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    c_in: int,
    filters: int,
    kernel: tuple,
    strides: tuple,
    dilation: tuple,
    padding: str,
    depth_multiplier: int,
    act: Any,
    bias: bool,
) -> Lowered:
    mid = c_in * depth_multiplier
    y, s = _conv(
        g,
        _k(key, "depthwise"),
        x,
        shape,
        2,
        c_in,
        mid,
        kernel,
        strides,
        dilation,
        padding,
        None,
        False,
        c_in,
    )
    return _conv(
        g, _k(key, "pointwise"), y, s, 2, mid, filters, (1, 1), (1, 1), (1, 1), "valid", act, bias
    )


def _conv_transpose(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    c_in: int,
    filters: int,
    kernel: tuple,
    strides: tuple,
    dilation: tuple,
    act: Any,
    bias: bool,
) -> Lowered:
    extra = [
        max(s - (d * (k - 1) + 1), 0) for k, s, d in zip(kernel, strides, dilation, strict=True)
    ]
    # torch's ConvTranspose init: fan_in is computed from weight dim 1 (out channels)
    bound = 1 / math.sqrt(filters * math.prod(kernel))
    ins = _conv_inputs(g, key, x, 2, (c_in, filters, *kernel), filters, bias, bound)
    y = g.op(
        "ConvTranspose",
        ins,
        kernel_shape=list(kernel),
        strides=list(strides),
        dilations=list(dilation),
        output_padding=extra,
    )
    out = tuple(
        None if n is None else (n - 1) * s + d * (k - 1) + 1 + e
        for n, k, s, d, e in zip(shape[:-1], kernel, strides, dilation, extra, strict=True)
    )
    return g.act(g.to_channels_last(y, 2), act), (*out, filters)


def _pool(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    rank: int,
    kind: str,
    pool: tuple,
    strides: tuple,
    padding: str,
) -> Lowered:
    ones = (1,) * rank
    pads = _same_pads(shape[:-1], pool, strides, ones) if padding == "same" else [0] * (2 * rank)
    y = g.to_channels_first(x, rank)
    if kind == "max":  # ONNX pads never win a max, as torch's -inf padding
        y = g.op("MaxPool", [y], kernel_shape=list(pool), strides=list(strides), pads=pads)
    else:  # 'same' averages over the real values only
        y = g.op(
            "AveragePool",
            [y],
            kernel_shape=list(pool),
            strides=list(strides),
            pads=pads,
            count_include_pad=0,
        )
    out = tuple(
        _conv_out(n, k, s, 1, pads[i] + pads[i + rank])
        for i, (n, k, s) in enumerate(zip(shape[:-1], pool, strides, strict=True))
    )
    return g.to_channels_last(y, rank), (*out, shape[-1])


def _global_pool(
    g: _Graph, key: str, x: str, shape: Shape, rank: int, kind: str, keepdims: bool
) -> Lowered:
    axes = list(range(1, rank + 1))
    y = g.op(
        "ReduceMax" if kind == "max" else "ReduceMean", [x, g.ints(axes)], keepdims=int(keepdims)
    )
    return y, ((*(1,) * rank, shape[-1]) if keepdims else (shape[-1],))


# torch gate order -> ONNX gate order (rows of W/R/B, in blocks of `units`)
_GATES = {"LSTM": (4, [0, 3, 1, 2]), "GRU": (3, [1, 0, 2]), "RNN": (1, [0])}


def _recurrent(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    kind: str,
    n_in: int,
    units: int,
    return_sequences: bool,
    activation: str,
    dropout: float,
    bias: bool,
    merge_mode: str | None = None,
) -> Lowered:
    gates, order = _GATES[kind]
    dirs = [""] if merge_mode is None else ["", "_reverse"]
    init = _uniform(1 / math.sqrt(units))

    def reorder(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[i * units : (i + 1) * units] for i in order])

    ws, rs, bs = [], [], []
    for d in dirs:
        p = f"{key}.rnn"
        ws.append(reorder(g.weight(f"{p}.weight_ih_l0{d}", (gates * units, n_in), init)))
        rs.append(reorder(g.weight(f"{p}.weight_hh_l0{d}", (gates * units, units), init)))
        if bias:
            b_ih = reorder(g.weight(f"{p}.bias_ih_l0{d}", (gates * units,), init))
            b_hh = reorder(g.weight(f"{p}.bias_hh_l0{d}", (gates * units,), init))
            bs.append(np.concatenate([b_ih, b_hh]))
    ins = [
        g.op("Transpose", [x], perm=[1, 0, 2]),  # (time, batch, features)
        g.param(f"{key}.W", np.stack(ws)),
        g.param(f"{key}.R", np.stack(rs)),
    ]
    if bias:
        ins.append(g.param(f"{key}.B", np.stack(bs)))
    attrs: dict[str, Any] = {
        "hidden_size": units,
        "direction": "forward" if merge_mode is None else "bidirectional",
    }
    if kind == "GRU":
        attrs["linear_before_reset"] = 1  # torch's GRU applies the reset gate after R
    if kind == "RNN":
        attrs["activations"] = [activation.capitalize()] * len(dirs)
    n_out = 3 if kind == "LSTM" else 2
    y, y_h = g.op(kind, ins, n_out, **attrs)[:2]
    steps = shape[0]
    if return_sequences:
        y = g.op("Transpose", [y], perm=[2, 0, 1, 3])  # (batch, time, dirs, units)
        axis, out_shape = 2, (steps,)
    else:
        # y_h: the forward pass's last step and the backward pass's step 0, as torch reads them
        y = g.op("Transpose", [y_h], perm=[1, 0, 2])  # (batch, dirs, units)
        axis, out_shape = 1, ()
    if merge_mode is None:
        return g.op("Squeeze", [y, g.ints([axis])]), (*out_shape, units)
    fwd, bwd = (
        g.op("Squeeze", [part, g.ints([axis])])
        for part in g.op("Split", [y, g.ints([1, 1])], 2, axis=axis)
    )
    if merge_mode == "concat":
        return g.op("Concat", [fwd, bwd], axis=-1), (*out_shape, 2 * units)
    if merge_mode == "sum":
        merged = g.op("Add", [fwd, bwd])
    elif merge_mode == "mul":
        merged = g.op("Mul", [fwd, bwd])
    else:
        merged = g.op("Div", [g.op("Add", [fwd, bwd]), g.const(2.0)])
    return merged, (*out_shape, units)


def _norm(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    kind: str,
    channels: int,
    rank: int,
    eps: float,
    momentum: float,
    groups: int,
) -> Lowered:
    p = f"{key}.norm"
    scale = g.param(f"{p}.weight", g.weight(f"{p}.weight", (channels,), _fill(1.0)))
    shift = g.param(f"{p}.bias", g.weight(f"{p}.bias", (channels,), _fill(0.0)))
    if kind == "layer":
        return g.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=float(eps)), shape
    if kind == "batch":
        mean = g.param(f"{p}.running_mean", g.weight(f"{p}.running_mean", (channels,), _fill(0.0)))
        var = g.param(f"{p}.running_var", g.weight(f"{p}.running_var", (channels,), _fill(1.0)))
        if g.state is not None and f"{p}.num_batches_tracked" in g.state:
            g.used.add(f"{p}.num_batches_tracked")
        inner = len(shape) - 1
        y = x if inner == 0 else g.to_channels_first(x, inner)
        y = g.op("BatchNormalization", [y, scale, shift, mean, var], epsilon=float(eps))
        return (y if inner == 0 else g.to_channels_last(y, inner)), shape
    # group (instance = one group per channel): statistics per (example, group), then the
    # per-channel affine; composed because opset 18's GroupNormalization scales per group
    inner = len(shape) - 1
    y = x if inner == 0 else g.to_channels_first(x, inner)
    grouped = g.op("Reshape", [y, g.ints([0, groups, -1])])
    mean = g.op("ReduceMean", [grouped, g.ints([2])], keepdims=1)
    centred = g.op("Sub", [grouped, mean])
    var = g.op("ReduceMean", [g.op("Mul", [centred, centred]), g.ints([2])], keepdims=1)
    normed = g.op("Div", [centred, g.op("Sqrt", [g.op("Add", [var, g.const(float(eps))])])])
    y = g.op("Reshape", [normed, g.op("Shape", [y])])
    bshape = [channels, *(1,) * inner]
    y = g.op(
        "Add",
        [
            g.op("Mul", [y, g.op("Reshape", [scale, g.ints(bshape)])]),
            g.op("Reshape", [shift, g.ints(bshape)]),
        ],
    )
    return (y if inner == 0 else g.to_channels_last(y, inner)), shape


def _embedding(
    g: _Graph, key: str, x: str, shape: Shape, input_dim: int, output_dim: int
) -> Lowered:
    w = g.weight(f"{key}.embedding.weight", (input_dim, output_dim), _normal)
    ids = g.op("Cast", [x], to=TensorProto.INT64)
    return g.op("Gather", [g.param(f"{key}.embedding.weight", w), ids], axis=0), (
        *shape,
        output_dim,
    )


def _self_attention(
    g: _Graph, key: str, x: str, shape: Shape, use_scale: bool, dropout: float
) -> Lowered:
    scores = g.op("MatMul", [x, g.op("Transpose", [x], perm=[0, 2, 1])])
    if use_scale:
        scores = g.op(
            "Mul", [scores, g.param(f"{key}.scale", g.weight(f"{key}.scale", (), _fill(1.0)))]
        )
    return g.op("MatMul", [g.op("Softmax", [scores], axis=-1), x]), shape


def _mha(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    dim: int,
    heads: int,
    key_dim: int,
    dropout: float,
    causal: bool,
) -> Lowered:
    inner = heads * key_dim  # the sequence length may be dynamic: Reshape's 0 copies it

    def split(name: str) -> str:
        y = g.linear(x, _k(key, name), dim, inner, True)
        y = g.op("Reshape", [y, g.ints([0, 0, heads, key_dim])])
        return g.op("Transpose", [y], perm=[0, 2, 1, 3])  # (batch, heads, time, key_dim)

    q = g.op("Div", [split("query"), g.const(math.sqrt(key_dim))])
    k, v = split("key"), split("value")
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])
    if causal:
        # -inf above the diagonal: a (time, time) matrix built from the scores' own shape
        square = g.op("Slice", [g.op("Shape", [scores]), g.ints([2]), g.ints([4])])
        full = g.op(
            "ConstantOfShape",
            [square],
            value=numpy_helper.from_array(np.array([-np.inf], np.float32)),
        )
        mask = g.op("Trilu", [full, g.const(1, np.int64)], upper=1)
        scores = g.op("Add", [scores, mask])
    out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    out = g.op("Reshape", [g.op("Transpose", [out], perm=[0, 2, 1, 3]), g.ints([0, 0, inner])])
    return g.linear(out, _k(key, "output"), inner, dim, True), shape


def _feed_forward(
    g: _Graph, key: str, x: str, shape: Shape, dim: int, hidden: int, act: str
) -> Lowered:
    y, s = _dense(g, _k(key, "inner"), x, shape, dim, hidden, act, True)
    return _dense(g, _k(key, "outer"), y, s, hidden, dim, None, True)


def _layer_norm(g: _Graph, key: str, x: str, dim: int, eps: float) -> str:
    scale = g.param(f"{key}.weight", g.weight(f"{key}.weight", (dim,), _fill(1.0)))
    shift = g.param(f"{key}.bias", g.weight(f"{key}.bias", (dim,), _fill(0.0)))
    return g.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=float(eps))


def _transformer(
    g: _Graph,
    key: str,
    x: str,
    shape: Shape,
    dim: int,
    heads: int,
    ffn: Ctor,
    dropout: float,
    eps: float,
    causal: bool,
) -> Lowered:
    a, _ = _mha(g, _k(key, "attention"), x, shape, dim, heads, dim // heads, 0.0, causal)
    x = _layer_norm(g, _k(key, "norm1"), g.op("Add", [x, a]), dim, eps)
    f, _ = _emit(g, ffn, _k(key, "ffn"), x, shape)
    return _layer_norm(g, _k(key, "norm2"), g.op("Add", [x, f]), dim, eps), shape


def _seq(g: _Graph, key: str, x: str, shape: Shape, named: list) -> Lowered:
    for name, c in named:
        x, shape = _emit(g, c, _k(key, name), x, shape)
    return x, shape


def _residual(
    g: _Graph, key: str, x: str, shape: Shape, body: Ctor, projection: Ctor | None
) -> Lowered:
    y, out = _emit(g, body, _k(key, "body"), x, shape)
    shortcut = x if projection is None else _emit(g, projection, _k(key, "projection"), x, shape)[0]
    return g.op("Add", [y, shortcut]), out


def _time_distributed(
    g: _Graph, key: str, x: str, shape: Shape, inner: Ctor, after: Ctor
) -> Lowered:
    t, rest = shape[0], shape[1:]
    if None in rest:
        raise NotExpressible("TimeDistributed needs static sizes after the time axis")
    y = g.op("Reshape", [x, g.ints([-1, *rest])])
    y, s = _emit(g, inner, _k(key, "inner"), y, rest)
    y, s = _emit(g, after, _k(key, "after"), y, s)
    if None in s:
        raise NotExpressible("TimeDistributed needs a static output per time step")
    # (batch, time) from the input itself, so a dynamic time axis works too
    batch_time = g.op("Slice", [g.op("Shape", [x]), g.ints([0]), g.ints([2])])
    return g.op("Reshape", [y, g.op("Concat", [batch_time, g.ints(s)], axis=0)]), (t, *s)


def _squeeze_excitation(
    g: _Graph, key: str, x: str, shape: Shape, channels: int, bottleneck: int
) -> Lowered:
    s = g.op("ReduceMean", [x, g.ints(list(range(1, len(shape))))], keepdims=1)
    s, _ = _dense(g, _k(key, "squeeze"), s, shape, channels, bottleneck, "relu", True)
    s, _ = _dense(g, _k(key, "excite"), s, shape, bottleneck, channels, "sigmoid", True)
    return g.op("Mul", [x, s]), shape


_MERGE_OPS = {"Add": "Add", "Average": "Add", "Multiply": "Mul", "Maximum": "Max", "Minimum": "Min"}


def _merge(
    g: _Graph, key: str, xs: list[str], shapes: list[Shape], op: str, axis: int = -1
) -> Lowered:
    if op == "Concatenate":
        rank = len(shapes[0]) + 1
        a = axis % rank - 1  # the axis in per-example shapes
        total = sum(s[a] for s in shapes) if all(s[a] is not None for s in shapes) else None
        out = tuple(total if i == a else d for i, d in enumerate(shapes[0]))
        return g.op("Concat", xs, axis=axis), out
    if op == "Subtract":
        return g.op("Sub", xs[:2]), shapes[0]
    y = xs[0]
    for other in xs[1:]:
        y = g.op(_MERGE_OPS[op], [y, other])
    if op == "Average":
        y = g.op("Div", [y, g.const(float(len(xs)))])
    return y, shapes[0]


_EMIT: dict[str, Callable[..., Lowered]] = {
    "Dense": _dense,
    "Act": _act,
    "nn.Dropout": _identity,
    "GaussianNoise": _identity,  # noise only while training
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Conv": _conv,
    "SeparableConv": _separable,
    "ConvTranspose": _conv_transpose,
    "Pool": _pool,
    "GlobalPool": _global_pool,
    "Recurrent": _recurrent,
    "Norm": _norm,
    "Embedding": _embedding,
    "SelfAttention": _self_attention,
    "MultiHeadAttention": _mha,
    "FeedForward": _feed_forward,
    "TransformerBlock": _transformer,
    "Seq": _seq,
    "Residual": _residual,
    "TimeDistributed": _time_distributed,
    "SqueezeExcitation": _squeeze_excitation,
}

# The IR layer types lowered here (everything the PyTorch lowering handles).
SUPPORTED: frozenset[str] = frozenset(torch_backend.LOWER)


# ---------------------------------------------------------------- the model
def _input_dtype(network: Network, name: str) -> int:
    first = first_layer(network, name)
    return (
        TensorProto.INT64 if first is not None and first.type == "Embedding" else TensorProto.FLOAT
    )


def _check_supported(network: Network) -> None:
    for layer in network.walk():
        if layer.type != "Branch" and layer.type not in SUPPORTED:
            raise UnsupportedLayer(unsupported(layer, BACKEND).diagnostics)


def build(
    network: Network,
    report: ShapeReport,
    state_dict: Mapping[str, Any] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
) -> Lowering:
    """A network whose HPO values are fixed, with its shape report, lowered: see Lowering."""
    if opset < DEFAULT_OPSET:
        raise ValueError(f"opset {opset}: the lowering needs {DEFAULT_OPSET} or newer")
    _check_supported(network)
    try:
        p = torch_backend.plan(network, report)
    except DSLError as exc:
        raise UnsupportedLayer(exc.diagnostics) from exc
    modules = {m.attr: m.ctor for m in p.modules}
    g = _Graph(state_dict, seed)
    shapes = {i.name: tuple(i.sample_shape) for i in network.inputs}
    names = [i.name for i in network.inputs]
    x, shape = names[0], shapes[names[0]]
    branches: list[tuple[str, Shape]] = []
    layers = {
        la.name.rsplit("/", 1)[-1]: la
        for top in network.layers
        for la in (top.sublayers if top.type == "Branch" else (top,))
    }

    def emit(attr: str, x: str, shape: Shape) -> Lowered:
        try:
            return _emit(g, modules[attr], attr, x, shape)
        except NotExpressible as exc:  # e.g. 'same' padding over a dimension declared None
            raise UnsupportedLayer(
                unsupported(layers[attr], BACKEND, str(exc)).diagnostics
            ) from exc

    for step in p.steps:
        if step.kind == "branch":
            b = names[step.input_index]
            s = shapes[b]
            for attr in step.attrs:
                b, s = emit(attr, b, s)
            branches.append((b, s))
        elif step.kind == "merge":
            c = modules[step.attrs[0]]
            x, shape = _merge(
                g, step.attrs[0], [b for b, _ in branches], [s for _, s in branches], *c.args
            )
            branches = []
        else:
            x, shape = emit(step.attrs[0], x, shape)
    if g.state is not None:
        unused = set(g.state) - g.used
        if unused:
            raise ValueError(f"weights the network does not have: {sorted(unused)}")
    g.nodes.append(helper.make_node("Identity", [x], ["output"], name="output"))
    inputs = [
        helper.make_tensor_value_info(
            i.name,
            _input_dtype(network, i.name),
            ["batch", *(f"{i.name}_{k}" if d is None else d for k, d in enumerate(i.sample_shape))],
        )
        for i in network.inputs
    ]
    output = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", *shape])
    graph = helper.make_graph(g.nodes, network.name, inputs, [output], g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="neural_dsl",
    )
    model.ir_version = min(model.ir_version, 10)  # readable by current onnxruntime releases
    return Lowering(model, g.params)


def lower(
    network: Network,
    report: ShapeReport,
    state_dict: Mapping[str, Any] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
) -> onnx.ModelProto:
    """A network whose HPO values are fixed, with its shape report, as an ONNX model."""
    return build(network, report, state_dict, opset=opset, seed=seed).model()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, length: int) -> bytes:
    """A length-delimited field's key and length (its wire type is 2)."""
    return _varint(tag << 3 | 2) + _varint(length)


# ModelProto.graph, GraphProto.initializer and TensorProto.raw_data
_GRAPH, _INITIALIZER, _RAW_DATA = 7, 5, 9


class Lowering:
    """A lowered network: the model without its weights (`skeleton`: nodes, inputs, outputs,
    constants) and the weights by name. Weights are most of a model's bytes, so they are
    never copied into TensorProtos: `write` streams them after the skeleton, and `check`
    checks the skeleton with each weight declared as a graph input of its shape."""

    def __init__(self, skeleton: onnx.ModelProto, weights: dict[str, np.ndarray]) -> None:
        self.skeleton = skeleton
        self.weights = weights

    def model(self) -> onnx.ModelProto:
        """The whole model as one ModelProto (weights copied in: for small models and tests)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.skeleton)
        model.graph.initializer.extend(
            numpy_helper.from_array(w, name) for name, w in self.weights.items()
        )
        return model

    def check(self) -> None:
        """onnx.checker with full_check (strict shape inference) on the graph. The weights
        enter as typed graph inputs rather than data: shape inference reads only their
        shapes, and `write` lays each out from its array, so its byte count is right."""
        probe = onnx.ModelProto()
        probe.CopyFrom(self.skeleton)
        probe.graph.input.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, w.shape)
            for name, w in self.weights.items()
        )
        onnx.checker.check_model(probe, full_check=True)

    def _headers(self) -> list[tuple[bytes, np.ndarray]]:
        """Each weight's TensorProto without its data, serialized, and its array."""
        return [
            (
                onnx.TensorProto(
                    name=name, dims=w.shape, data_type=TensorProto.FLOAT
                ).SerializeToString(),
                w,
            )
            for name, w in self.weights.items()
        ]

    def write(self, out: BinaryIO) -> int:
        """Serialize the model to `out` (bytes a ModelProto parses back as `model()`), each
        weight's bytes written straight from its array, and return the size. Protobuf lets
        a message's fields come in any order, and a repeated field's elements gather
        wherever they appear: the weights go last, as initializers of the graph, behind a
        length computed up front. Memory: the skeleton, never a copy of the weights."""
        head = onnx.ModelProto()
        head.CopyFrom(self.skeleton)
        graph = head.graph.SerializeToString()
        head.ClearField("graph")
        head_bytes = head.SerializeToString()
        entries = []
        for header, w in self._headers():
            body = len(header) + len(_field(_RAW_DATA, w.nbytes)) + w.nbytes
            entries.append((_field(_INITIALIZER, body), header, w))
        graph_len = len(graph) + sum(
            len(key) + len(header) + len(_field(_RAW_DATA, w.nbytes)) + w.nbytes
            for key, header, w in entries
        )
        size = len(head_bytes) + len(_field(_GRAPH, graph_len)) + graph_len
        if size > MAX_MODEL_BYTES:
            raise ValueError(
                f"the ONNX model would be {size:,} bytes: a protobuf message stops at 2 GiB "
                "(models that large keep their weights as external data, not written here)"
            )
        out.write(head_bytes)
        out.write(_field(_GRAPH, graph_len))
        out.write(graph)
        for key, header, w in entries:
            out.write(key)
            out.write(header)
            out.write(_field(_RAW_DATA, w.nbytes))
            out.write(w.data)  # the array's own memory
        return size

    def serialize(self) -> bytes:
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()


def to_onnx(
    network: Network,
    state_dict: Mapping[str, Any] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    hparams: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> onnx.ModelProto:
    """The network as an ONNX model: with the weights of `state_dict` (a torch state_dict's
    keys, numpy values: see `torch_state_dict`), or fresh ones drawn from `seed` with the
    torch backend's initialisation scheme. HPO values come from `hparams`."""
    from . import prepare

    _check_supported(network)
    network, report = prepare(network, "pytorch", hparams)
    return lower(network, report, state_dict, opset=opset, seed=seed)


__all__ = [
    "DEFAULT_OPSET",
    "SUPPORTED",
    "Lowering",
    "UnsupportedLayer",
    "build",
    "lower",
    "to_onnx",
    "torch_state_dict",
]
