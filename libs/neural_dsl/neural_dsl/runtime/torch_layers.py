"""PyTorch modules that compute what the DSL's (Keras-flavoured, channels-last) layers mean.

Tensors stay channels-last between layers, as the DSL declares its inputs; convolutions
and poolings move channels to the front only around the torch op. So `Flatten` orders
values as Keras does, and weights carry over to a Keras model of the same network.

This file is self-contained on purpose (torch and the standard library only): the PyTorch
code generator copies the classes a network uses into the generated module, so generated
code and the live builder run the very same code.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: F.softmax(x, dim=-1),
    "log_softmax": lambda x: F.log_softmax(x, dim=-1),
    "elu": F.elu,
    "selu": F.selu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "relu6": F.relu6,
    "hard_sigmoid": F.hardsigmoid,
    "exponential": torch.exp,
    "mish": F.mish,
}


class Act(nn.Module):
    """An activation by its DSL name; `linear`/None is the identity."""

    def __init__(self, name: str | None, alpha: float | None = None) -> None:
        super().__init__()
        self.name = name or "linear"
        self.alpha = 0.2 if alpha is None else alpha  # Keras' leaky_relu default slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "linear":
            return x
        if self.name == "leaky_relu":
            return F.leaky_relu(x, self.alpha)
        return _ACTIVATIONS[self.name](x)


class Dense(nn.Module):
    """Keras Dense: a linear map on the last axis, then the activation."""

    def __init__(self, in_features: int, units: int, activation: str | None, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, units, bias=bias)
        self.act = Act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


def same_padding(sizes: list[int], kernel: tuple, strides: tuple, dilation: tuple) -> list[int]:
    """TensorFlow's 'same' padding (the extra pixel goes after), in F.pad's order."""
    pads: list[int] = []
    for n, k, s, d in zip(
        reversed(sizes), reversed(kernel), reversed(strides), reversed(dilation), strict=True
    ):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


class Conv(nn.Module):
    """Keras ConvND on channels-last input (valid, same or causal padding)."""

    def __init__(
        self,
        rank: int,
        in_channels: int,
        filters: int,
        kernel: tuple,
        strides: tuple,
        dilation: tuple,
        padding: str,
        activation: str | None,
        bias: bool,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.kernel, self.strides, self.dilation, self.padding = kernel, strides, dilation, padding
        self.conv = _CONV[rank](
            in_channels,
            filters,
            kernel,
            stride=strides,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.act = Act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(-1, 1)
        if self.padding == "same":
            x = F.pad(x, same_padding(list(x.shape[2:]), self.kernel, self.strides, self.dilation))
        elif self.padding == "causal":
            x = F.pad(x, [(self.kernel[0] - 1) * self.dilation[0], 0])
        return self.act(self.conv(x).movedim(1, -1))


class SeparableConv(nn.Module):
    """Keras SeparableConv2D: a depthwise convolution, then a 1x1 pointwise one."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel: tuple,
        strides: tuple,
        dilation: tuple,
        padding: str,
        depth_multiplier: int,
        activation: str | None,
        bias: bool,
    ) -> None:
        super().__init__()
        mid = in_channels * depth_multiplier
        self.depthwise = Conv(
            2, in_channels, mid, kernel, strides, dilation, padding, None, False, in_channels
        )
        self.pointwise = Conv(2, mid, filters, (1, 1), (1, 1), (1, 1), "valid", activation, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ConvTranspose(nn.Module):
    """Keras Conv2DTranspose with valid padding: out = n*s + max(k_eff - s, 0)."""

    def __init__(
        self,
        in_channels: int,
        filters: int,
        kernel: tuple,
        strides: tuple,
        dilation: tuple,
        activation: str | None,
        bias: bool,
    ) -> None:
        super().__init__()
        extra = tuple(
            max(s - (d * (k - 1) + 1), 0) for k, s, d in zip(kernel, strides, dilation, strict=True)
        )
        self.conv = nn.ConvTranspose2d(
            in_channels,
            filters,
            kernel,
            stride=strides,
            dilation=dilation,
            output_padding=extra,
            bias=bias,
        )
        self.act = Act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x.movedim(-1, 1)).movedim(1, -1))


_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class Pool(nn.Module):
    """Keras Max/AveragePoolingND; 'same' averages only over the real (unpadded) values."""

    def __init__(self, rank: int, kind: str, pool: tuple, strides: tuple, padding: str) -> None:
        super().__init__()
        self.rank, self.kind, self.pool, self.strides, self.padding = (
            rank,
            kind,
            pool,
            strides,
            padding,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.movedim(-1, 1)
        ones = (1,) * self.rank
        pads = (
            same_padding(list(x.shape[2:]), self.pool, self.strides, ones)
            if self.padding == "same"
            else []
        )
        if self.kind == "max":
            if pads:
                x = F.pad(x, pads, value=float("-inf"))
            y = _MAX[self.rank](x, self.pool, self.strides)
        elif pads:
            total = _AVG[self.rank](F.pad(x, pads), self.pool, self.strides)
            count = _AVG[self.rank](F.pad(torch.ones_like(x[:, :1]), pads), self.pool, self.strides)
            y = total / count
        else:
            y = _AVG[self.rank](x, self.pool, self.strides)
        return y.movedim(1, -1)


class GlobalPool(nn.Module):
    def __init__(self, rank: int, kind: str, keepdims: bool) -> None:
        super().__init__()
        self.axes = tuple(range(1, rank + 1))
        self.kind, self.keepdims = kind, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "max":
            return torch.amax(x, dim=self.axes, keepdim=self.keepdims)
        return torch.mean(x, dim=self.axes, keepdim=self.keepdims)


class Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Reshape(nn.Module):
    def __init__(self, target: tuple) -> None:
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.target)


class GaussianNoise(nn.Module):
    """Adds N(0, stddev) noise while training; the identity at inference."""

    def __init__(self, stddev: float) -> None:
        super().__init__()
        self.stddev = stddev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x) * self.stddev if self.training else x


class Recurrent(nn.Module):
    """Keras SimpleRNN / LSTM / GRU (reset_after=True), optionally Bidirectional.

    Keras keeps one bias per gate where torch keeps two: with bias_hh at zero both compute
    the same function, so torch counts `units * gates` more parameters for LSTM/SimpleRNN."""

    def __init__(
        self,
        kind: str,
        in_features: int,
        units: int,
        return_sequences: bool,
        activation: str,
        dropout: float,
        bias: bool,
        merge_mode: str | None = None,
    ) -> None:
        super().__init__()
        bidirectional = merge_mode is not None
        if kind == "RNN":
            self.rnn = nn.RNN(
                in_features,
                units,
                nonlinearity=activation,
                bias=bias,
                batch_first=True,
                bidirectional=bidirectional,
            )
        else:
            cls = nn.LSTM if kind == "LSTM" else nn.GRU
            self.rnn = cls(
                in_features, units, bias=bias, batch_first=True, bidirectional=bidirectional
            )
        self.units, self.return_sequences, self.merge_mode = units, return_sequences, merge_mode
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.dropout(x))
        if self.merge_mode is None:
            return out if self.return_sequences else out[:, -1]
        u = self.units
        fwd, bwd = (out[..., :u], out[..., u:])
        if not self.return_sequences:
            fwd, bwd = fwd[:, -1], bwd[:, 0]  # the backward pass ends at time step 0
        if self.merge_mode == "concat":
            return torch.cat([fwd, bwd], dim=-1)
        if self.merge_mode == "sum":
            return fwd + bwd
        if self.merge_mode == "mul":
            return fwd * bwd
        return (fwd + bwd) / 2


class Norm(nn.Module):
    """Keras Batch/Layer/Group/InstanceNormalization over the last (channel) axis."""

    def __init__(
        self, kind: str, channels: int, rank: int, eps: float, momentum: float, groups: int
    ) -> None:
        super().__init__()
        self.kind = kind
        if kind == "batch":
            cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d, 4: nn.BatchNorm3d}
            self.norm = cls[rank](channels, eps=eps, momentum=1.0 - momentum)
        elif kind == "layer":
            self.norm = nn.LayerNorm(channels, eps=eps)
        else:  # group; instance normalization is one group per channel
            self.norm = nn.GroupNorm(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer" or x.dim() == 2:  # already (batch, channels) or per-feature
            return self.norm(x)
        return self.norm(x.movedim(-1, 1)).movedim(1, -1)


class Embedding(nn.Module):
    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.long())


class SelfAttention(nn.Module):
    """Keras Attention()([x, x]): dot-product attention of the sequence with itself."""

    def __init__(self, use_scale: bool, dropout: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(())) if use_scale else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = x @ x.transpose(-1, -2)
        if self.scale is not None:
            scores = scores * self.scale
        return self.dropout(F.softmax(scores, dim=-1)) @ x


class MultiHeadAttention(nn.Module):
    """Keras MultiHeadAttention as self-attention (query = value = key = x)."""

    def __init__(self, dim: int, heads: int, key_dim: int, dropout: float, causal: bool) -> None:
        super().__init__()
        inner = heads * key_dim
        self.heads, self.key_dim, self.causal = heads, key_dim, causal
        self.query = nn.Linear(dim, inner)
        self.key = nn.Linear(dim, inner)
        self.value = nn.Linear(dim, inner)
        self.output = nn.Linear(inner, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.key_dim).transpose(1, 2)

        q = split(self.query(x)) / math.sqrt(self.key_dim)
        k, v = split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        attn = self.dropout(F.softmax(scores, dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, t, self.heads * self.key_dim)
        return self.output(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.inner = Dense(dim, hidden, activation, True)
        self.outer = Dense(hidden, dim, None, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(self.inner(x))


class TransformerBlock(nn.Module):
    """Post-norm transformer encoder (or causal decoder) layer; `ffn` may be a user block."""

    def __init__(
        self, dim: int, heads: int, ffn: nn.Module, dropout: float, eps: float, causal: bool
    ) -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, heads, dim // heads, 0.0, causal)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.ffn = ffn
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.dropout(self.attention(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class Seq(nn.Sequential):
    """Named layers in order (`Seq([("conv2d_2", ...), ...])`)."""

    def __init__(self, named: list) -> None:
        super().__init__()
        for name, module in named:
            self.add_module(name, module)


class Residual(nn.Module):
    """body(x) + shortcut(x); the shortcut is projected when the body changes the shape."""

    def __init__(self, body: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.projection is None else self.projection(x)
        return self.body(x) + shortcut


class TimeDistributed(nn.Module):
    """Applies `inner` (then `after`) to every time step of (batch, steps, ...)."""

    def __init__(self, inner: nn.Module, after: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[0], x.shape[1]
        y = self.after(self.inner(x.reshape(b * t, *x.shape[2:])))
        return y.reshape(b, t, *y.shape[1:])


class Merge(nn.Module):
    """Keras Add / Subtract / Multiply / Average / Maximum / Minimum / Concatenate."""

    def __init__(self, op: str, axis: int = -1) -> None:
        super().__init__()
        self.op, self.axis = op, axis

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.op == "Concatenate":
            return torch.cat(xs, dim=self.axis)
        if self.op == "Subtract":
            return xs[0] - xs[1]
        out = xs[0]
        for y in xs[1:]:
            if self.op in ("Add", "Average"):
                out = out + y
            elif self.op == "Multiply":
                out = out * y
            elif self.op == "Maximum":
                out = torch.maximum(out, y)
            else:
                out = torch.minimum(out, y)
        return out / len(xs) if self.op == "Average" else out


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.squeeze = Dense(channels, bottleneck, "relu", True)
        self.excite = Dense(bottleneck, channels, "sigmoid", True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=tuple(range(1, x.dim() - 1)), keepdim=True)
        return x * self.excite(self.squeeze(s))


def place(module: nn.Module, device: str | None) -> nn.Module:
    """Honour `@ "cuda:0"` where that device exists; warn and stay put where it does not."""
    if device is None or device == "auto":
        return module
    target = "cuda" + device[3:] if device.startswith("gpu") else device
    available = (
        target == "cpu"
        or (
            target.startswith("cuda")
            and torch.cuda.is_available()
            and int(target.partition(":")[2] or 0) < torch.cuda.device_count()
        )
        or (target == "mps" and torch.backends.mps.is_available())
    )
    if not available:
        warnings.warn(
            f"device {device!r} is not available here: layer stays on the CPU", stacklevel=2
        )
        return module
    module.device_hint = target  # type: ignore[assignment]
    return module.to(target)


def on_device(module: nn.Module, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Move the input (or a merge's inputs) to the layer's device (set by `place`), call it."""
    device = getattr(module, "device_hint", None)
    if device is None:
        return module(x)
    return module([t.to(device) for t in x] if isinstance(x, list) else x.to(device))
