"""Read a Keras model's weights as the PyTorch state_dict of the same network.

The inverse of `transfer.torch_to_keras`, laid out as it is (one function per construct,
in the same order), so the two read side by side: each IR layer names one Keras layer (by
name) and one torch module (by state_dict prefix), and each weight is re-laid out by the
`*_to_torch` inverse of the `weight_layouts` function transfer uses. Torch is not
imported: the keys are named here, exactly as torch's `state_dict()` of the model
`torch_backend.build_live` builds names them, so `onnx_backend` can export a model trained
with Keras, and a torch model can `load_state_dict` it (strict).

Where Keras keeps one recurrent bias per gate, torch keeps two that it adds: Keras' bias
goes to `bias_ih` and `bias_hh` is zero (the same function). Keras' GRU (reset_after=True)
keeps both biases, as torch does. BatchNorm's `num_batches_tracked` has no Keras
counterpart (it only matters to torch with momentum=None, which the backend never uses):
it is 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Layer, Network
from ..shapes import ShapeReport
from . import torch_backend
from .weight_layouts import (
    conv_kernel_to_torch,
    conv_transpose_to_torch,
    depthwise_to_torch,
    gru_gates,
    mha_output_to_torch,
    mha_projection_to_torch,
)

State = dict[str, np.ndarray]


def _leaf(layer: Layer) -> str:
    return layer.name.rsplit("/", 1)[-1]


def _dense(key: str, w: list[np.ndarray]) -> State:
    """A Keras Dense's [kernel (in, out), bias] as torch's nn.Linear at `key`."""
    out = {f"{key}.weight": np.ascontiguousarray(w[0].T)}
    if len(w) > 1:
        out[f"{key}.bias"] = w[1]
    return out


def _conv(key: str, kernel: np.ndarray, rest: list[np.ndarray]) -> State:
    """A convolution's torch-laid-out kernel and its bias, if any, at `key`."""
    out = {f"{key}.weight": kernel}
    if rest:
        out[f"{key}.bias"] = rest[0]
    return out


def _rnn_state(key: str, kind: str, suffix: str, w: list[np.ndarray]) -> State:
    """Keras [kernel, recurrent_kernel, bias?] as torch's weight_ih/hh and bias_ih/hh."""
    w_ih, w_hh = w[0].T, w[1].T
    if kind == "GRU":
        out = {
            f"{key}.weight_ih_l0{suffix}": gru_gates(w_ih),
            f"{key}.weight_hh_l0{suffix}": gru_gates(w_hh),
        }
        if len(w) > 2:  # (2, 3 * units): the input and the recurrent bias
            out[f"{key}.bias_ih_l0{suffix}"] = gru_gates(w[2][0])
            out[f"{key}.bias_hh_l0{suffix}"] = gru_gates(w[2][1])
        return out
    out = {
        f"{key}.weight_ih_l0{suffix}": np.ascontiguousarray(w_ih),
        f"{key}.weight_hh_l0{suffix}": np.ascontiguousarray(w_hh),
    }
    if len(w) > 2:  # torch adds bias_ih and bias_hh: all of Keras' bias in one of them
        out[f"{key}.bias_ih_l0{suffix}"] = w[2]
        out[f"{key}.bias_hh_l0{suffix}"] = np.zeros_like(w[2])
    return out


def _mha(key: str, w: list[np.ndarray]) -> State:
    """Keras MultiHeadAttention's query/key/value/output kernels and biases as four
    nn.Linear modules."""
    out: State = {}
    for i, proj in enumerate(("query", "key", "value")):
        weight, bias = mha_projection_to_torch(w[2 * i], w[2 * i + 1])
        out |= {f"{key}.{proj}.weight": weight, f"{key}.{proj}.bias": bias}
    return out | {f"{key}.output.weight": mha_output_to_torch(w[6]), f"{key}.output.bias": w[7]}


def _norm(key: str, w: list[np.ndarray]) -> State:
    out = {f"{key}.weight": w[0], f"{key}.bias": w[1]}
    if len(w) > 2:  # BatchNormalization's moving statistics
        out |= {
            f"{key}.running_mean": w[2],
            f"{key}.running_var": w[3],
            f"{key}.num_batches_tracked": np.array(0, np.int64),
        }
    return out


_RNN_KIND = {"LSTM": "LSTM", "GRU": "GRU"}


def _leaf_state(layer: Layer, key: str, w: list[np.ndarray]) -> State:
    """The torch module at `key` of a layer that is exactly one Keras layer, from that
    layer's `get_weights()`."""
    t = layer.type
    if t in ("Dense", "Output"):
        return _dense(f"{key}.linear", w)
    if t in ("Conv1D", "Conv2D", "Conv3D"):
        return _conv(f"{key}.conv", conv_kernel_to_torch(w[0]), w[1:])
    if t == "DepthwiseConv2D":
        return _conv(f"{key}.conv", depthwise_to_torch(w[0]), w[1:])
    if t == "SeparableConv2D":
        return {
            f"{key}.depthwise.conv.weight": depthwise_to_torch(w[0]),
            **_conv(f"{key}.pointwise.conv", conv_kernel_to_torch(w[1]), w[2:]),
        }
    if t == "Conv2DTranspose":
        return _conv(f"{key}.conv", conv_transpose_to_torch(w[0]), w[1:])
    if t in ("SimpleRNN", "SimpleRNNDropoutWrapper", "LSTM", "GRU"):
        return _rnn_state(f"{key}.rnn", _RNN_KIND.get(t, "RNN"), "", w)
    if t == "Bidirectional":
        kind = _RNN_KIND.get(layer.wrapped.type, "RNN")
        half = len(w) // 2  # the forward layer's weights, then the backward layer's
        return _rnn_state(f"{key}.rnn", kind, "", w[:half]) | _rnn_state(
            f"{key}.rnn", kind, "_reverse", w[half:]
        )
    if t in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
    ):
        return _norm(f"{key}.norm", w)
    if t == "Embedding":
        return {f"{key}.embedding.weight": w[0]}
    if t == "Attention":
        # Keras hands a scalar weight back as a numpy scalar, not an array
        return {f"{key}.scale": np.asarray(w[0]).reshape(())} if w else {}
    return {}


def state_dict_from_keras(network: Network, report: ShapeReport, keras_model: Any) -> State:
    """The weights of `keras_model` (built from `network` by keras_backend) as the torch
    state_dict of the same network (numpy values, keys in torch's order).

    A setting Keras has and the torch lowering does not (e.g. an LSTM's recurrent_dropout)
    raises the torch backend's DSLError naming the layer: such a model has no torch
    counterpart, so no state_dict."""
    torch_backend.plan(network, report)  # refuses what torch cannot express, naming the layer
    out: State = {}
    for layer, ls in zip(network.layers, report.layers, strict=True):
        if layer.type == "Branch":
            for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
                out |= _read(sub, sub_ls, _leaf(sub), keras_model)
        else:
            out |= _read(layer, ls, layer.name, keras_model)
    return out


def _read(layer: Layer, ls: Any, key: str, model: Any) -> State:
    name = _leaf(layer)
    t = layer.type
    if t in ("ResidualConnection", "Residual"):
        out: State = {}
        for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
            out |= _read(sub, sub_ls, f"{key}.body.{_leaf(sub)}", model)
        if tuple(ls.input_shape) != tuple(ls.output_shape):  # keras_backend adds a projection
            w = model.get_layer(f"{name}_projection").get_weights()
            if len(ls.input_shape) == 1:
                out |= _dense(f"{key}.projection.linear", w)
            else:
                out |= _conv(f"{key}.projection.conv", conv_kernel_to_torch(w[0]), w[1:])
        return out
    if t in ("TransformerEncoder", "TransformerDecoder"):
        block = model.get_layer(name)
        out = _mha(f"{key}.attention", block.attention.get_weights())
        out |= _norm(f"{key}.norm1", block.norm1.get_weights())
        if layer.sublayers:
            for sub, k_layer in zip(layer.sublayers, block.ffn, strict=True):
                out |= _leaf_state(sub, f"{key}.ffn.{_leaf(sub)}", k_layer.get_weights())
        else:
            out |= _dense(f"{key}.ffn.inner.linear", block.ffn[0].get_weights())
            out |= _dense(f"{key}.ffn.outer.linear", block.ffn[1].get_weights())
        return out | _norm(f"{key}.norm2", block.norm2.get_weights())
    if t == "MultiHeadAttention":
        return _mha(key, model.get_layer(name).get_weights())
    if t == "SqueezeExcitation":
        squeeze = model.get_layer(f"{name}_squeeze").get_weights()
        excite = model.get_layer(f"{name}_excite").get_weights()
        return _dense(f"{key}.squeeze.linear", squeeze) | _dense(f"{key}.excite.linear", excite)
    if t == "TimeDistributed":
        out = _leaf_state(layer.wrapped, f"{key}.inner", model.get_layer(name).layer.get_weights())
        for sub in layer.sublayers:
            leaf = _leaf(sub)
            out |= _leaf_state(
                sub, f"{key}.after.{leaf}", model.get_layer(leaf).layer.get_weights()
            )
        return out
    return _leaf_state(layer, key, model.get_layer(name).get_weights())
