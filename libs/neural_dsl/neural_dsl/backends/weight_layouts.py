"""How one weight is laid out in PyTorch and in Keras, both ways (numpy only).

`transfer.torch_to_keras` uses the `*_to_keras` functions, `keras_weights.state_dict_from_keras`
their `*_to_torch` inverses; keeping each pair side by side keeps the two directions in step.
Torch keeps (out, in, *kernel), Keras (*kernel, in, out); a dense kernel is simply transposed.
"""

from __future__ import annotations

import numpy as np


def conv_kernel_to_keras(w: np.ndarray) -> np.ndarray:
    """(out, in, *kernel) -> (*kernel, in, out)."""
    rank = w.ndim - 2
    return np.transpose(w, (*range(2, 2 + rank), 1, 0))


def conv_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    rank = k.ndim - 2
    return np.ascontiguousarray(np.transpose(k, (rank + 1, rank, *range(rank))))


def depthwise_to_keras(w: np.ndarray, depth_multiplier: int) -> np.ndarray:
    """torch (c * dm, 1, kh, kw), channel-major -> Keras (kh, kw, c, dm)."""
    c = w.shape[0] // depth_multiplier
    return w.reshape(c, depth_multiplier, *w.shape[2:]).transpose(2, 3, 0, 1)


def depthwise_to_torch(k: np.ndarray) -> np.ndarray:
    kh, kw, c, dm = k.shape
    return np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(c * dm, 1, kh, kw))


def conv_transpose_to_keras(w: np.ndarray) -> np.ndarray:
    """torch (in, out, kh, kw) -> Keras (kh, kw, out, in)."""
    return np.transpose(w, (2, 3, 1, 0))


def conv_transpose_to_torch(k: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))


def gru_gates(a: np.ndarray) -> np.ndarray:
    """GRU gate blocks along axis 0: torch (r, z, n) <-> Keras (z, r, h). Swapping the
    first two blocks is its own inverse, so one function serves both directions."""
    r, z, n = np.split(a, 3, axis=0)
    return np.concatenate([z, r, n], axis=0)


def mha_projection_to_keras(
    w: np.ndarray, b: np.ndarray, heads: int, key_dim: int
) -> list[np.ndarray]:
    """A query/key/value nn.Linear (heads * key_dim, dim) -> Keras' (dim, heads, key_dim)
    kernel and (heads, key_dim) bias."""
    kernel = w.T
    return [kernel.reshape(kernel.shape[0], heads, key_dim), b.reshape(heads, key_dim)]


def mha_projection_to_torch(kernel: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(kernel.reshape(kernel.shape[0], -1).T), bias.reshape(-1)]


def mha_output_to_keras(w: np.ndarray, heads: int, key_dim: int) -> np.ndarray:
    """The output nn.Linear (dim, heads * key_dim) -> Keras' (heads, key_dim, dim) kernel."""
    return w.T.reshape(heads, key_dim, -1)


def mha_output_to_torch(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)
