"""Copy trained weights from the PyTorch model of a network to its Keras model.

Both models come from the same IR, so each IR layer names one torch module (by attribute
path) and one Keras layer (by name). Weights are re-laid out per layer type: torch keeps
(out, in, *kernel), Keras (*kernel, in, out); GRU gates are (r, z, n) in torch and (z, r, h)
in Keras; torch's two recurrent biases add up to Keras' one. The layouts themselves are in
weight_layouts; keras_weights.state_dict_from_keras is the inverse of this module.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..ir import Layer, Network
from ..shapes import ShapeReport
from .weight_layouts import (
    conv_kernel_to_keras,
    conv_transpose_to_keras,
    depthwise_to_keras,
    gru_gates,
    mha_output_to_keras,
    mha_projection_to_keras,
)


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy()


def _dense(m: Any) -> list[np.ndarray]:
    out = [_np(m.linear.weight).T]
    if m.linear.bias is not None:
        out.append(_np(m.linear.bias))
    return out


def _rnn_weights(rnn: Any, kind: str, suffix: str) -> list[np.ndarray]:
    w_ih = _np(getattr(rnn, f"weight_ih_l0{suffix}"))
    w_hh = _np(getattr(rnn, f"weight_hh_l0{suffix}"))
    b_ih = getattr(rnn, f"bias_ih_l0{suffix}", None)
    b_hh = getattr(rnn, f"bias_hh_l0{suffix}", None)
    if kind == "GRU":
        out = [gru_gates(w_ih).T, gru_gates(w_hh).T]
        if b_ih is not None:
            out.append(np.stack([gru_gates(_np(b_ih)), gru_gates(_np(b_hh))]))
        return out
    out = [w_ih.T, w_hh.T]
    if b_ih is not None:
        out.append(_np(b_ih) + _np(b_hh))
    return out


def _mha(m: Any, heads: int, key_dim: int) -> list[np.ndarray]:
    def proj(lin: Any) -> list[np.ndarray]:
        return mha_projection_to_keras(_np(lin.weight), _np(lin.bias), heads, key_dim)

    out_w = mha_output_to_keras(_np(m.output.weight), heads, key_dim)
    return [*proj(m.query), *proj(m.key), *proj(m.value), out_w, _np(m.output.bias)]


def _norm(m: Any) -> list[np.ndarray]:
    n = m.norm
    weights = [_np(n.weight), _np(n.bias)]
    if hasattr(n, "running_mean") and n.running_mean is not None:
        weights += [_np(n.running_mean), _np(n.running_var)]
    return weights


def _leaf_weights(layer: Layer, m: Any) -> list[np.ndarray]:
    """Keras `set_weights` order for a layer that is exactly one Keras layer."""
    t = layer.type
    if t in ("Dense", "Output"):
        return _dense(m)
    if t in ("Conv1D", "Conv2D", "Conv3D"):
        out = [conv_kernel_to_keras(_np(m.conv.weight))]
        return out + ([_np(m.conv.bias)] if m.conv.bias is not None else [])
    if t == "DepthwiseConv2D":
        kernel = depthwise_to_keras(_np(m.conv.weight), layer.get("depth_multiplier", 1))
        return [kernel] + ([_np(m.conv.bias)] if m.conv.bias is not None else [])
    if t == "SeparableConv2D":
        out = [
            depthwise_to_keras(_np(m.depthwise.conv.weight), layer.get("depth_multiplier", 1)),
            conv_kernel_to_keras(_np(m.pointwise.conv.weight)),
        ]
        return out + ([_np(m.pointwise.conv.bias)] if m.pointwise.conv.bias is not None else [])
    if t == "Conv2DTranspose":
        out = [conv_transpose_to_keras(_np(m.conv.weight))]
        return out + ([_np(m.conv.bias)] if m.conv.bias is not None else [])
    if t in ("SimpleRNN", "SimpleRNNDropoutWrapper", "LSTM", "GRU"):
        kind = {"LSTM": "LSTM", "GRU": "GRU"}.get(t, "RNN")
        return _rnn_weights(m.rnn, kind, "")
    if t == "Bidirectional":
        kind = {"LSTM": "LSTM", "GRU": "GRU"}.get(layer.wrapped.type, "RNN")
        return _rnn_weights(m.rnn, kind, "") + _rnn_weights(m.rnn, kind, "_reverse")
    if t in (
        "BatchNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "InstanceNormalization",
    ):
        return _norm(m) if t != "LayerNormalization" else [_np(m.norm.weight), _np(m.norm.bias)]
    if t == "Embedding":
        return [_np(m.embedding.weight)]
    if t == "Attention":
        return [_np(m.scale).reshape(())] if m.scale is not None else []
    return []


def torch_to_keras(
    network: Network, report: ShapeReport, torch_model: Any, keras_model: Any
) -> None:
    """Give `keras_model` the weights of `torch_model` (both built from `network`)."""
    for layer, ls in zip(network.layers, report.layers, strict=True):
        if layer.type == "Branch":
            for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
                _copy(sub, sub_ls, getattr(torch_model, sub.name.rsplit("/", 1)[-1]), keras_model)
        else:
            _copy(layer, ls, getattr(torch_model, layer.name), keras_model)


def _copy(layer: Layer, ls: Any, m: Any, model: Any) -> None:
    name = layer.name.rsplit("/", 1)[-1]
    t = layer.type
    if t in ("ResidualConnection", "Residual"):
        for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
            _copy(sub, sub_ls, getattr(m.body, sub.name.rsplit("/", 1)[-1]), model)
        if m.projection is not None:
            proj = model.get_layer(f"{name}_projection")
            if hasattr(m.projection, "linear"):
                proj.set_weights(_dense(m.projection))
            else:
                conv = m.projection.conv
                proj.set_weights([conv_kernel_to_keras(_np(conv.weight)), _np(conv.bias)])
        return
    if t in ("TransformerEncoder", "TransformerDecoder"):
        block = model.get_layer(name)
        d = ls.input_shape[-1]
        heads = layer.get("num_heads")
        block.attention.set_weights(_mha(m.attention, heads, d // heads))
        block.norm1.set_weights([_np(m.norm1.weight), _np(m.norm1.bias)])
        block.norm2.set_weights([_np(m.norm2.weight), _np(m.norm2.bias)])
        if layer.sublayers:
            for sub, k_layer in zip(layer.sublayers, block.ffn, strict=True):
                k_layer.set_weights(_leaf_weights(sub, getattr(m.ffn, sub.name.rsplit("/", 1)[-1])))
        else:
            block.ffn[0].set_weights(_dense(m.ffn.inner))
            block.ffn[1].set_weights(_dense(m.ffn.outer))
        return
    if t == "MultiHeadAttention":
        d = ls.input_shape[-1]
        heads = layer.get("num_heads")
        model.get_layer(name).set_weights(
            _mha(m, heads, layer.get("key_dim") or max(1, d // heads))
        )
        return
    if t == "SqueezeExcitation":
        model.get_layer(f"{name}_squeeze").set_weights(_dense(m.squeeze))
        model.get_layer(f"{name}_excite").set_weights(_dense(m.excite))
        return
    if t == "TimeDistributed":
        model.get_layer(name).layer.set_weights(_leaf_weights(layer.wrapped, m.inner))
        for sub in layer.sublayers:
            leaf = sub.name.rsplit("/", 1)[-1]
            model.get_layer(leaf).layer.set_weights(_leaf_weights(sub, getattr(m.after, leaf)))
        return
    weights = _leaf_weights(layer, m)
    if weights:
        model.get_layer(name).set_weights(weights)
