"""Keras pieces the DSL needs that Keras itself does not ship.

Self-contained (keras, tensorflow and the standard library only): the TensorFlow code
generator copies the pieces a network uses into the generated module, so generated code
and the live builder run the very same code.
"""

from __future__ import annotations

import warnings

import keras


class TransformerBlock(keras.layers.Layer):
    """Post-norm transformer encoder (or causal decoder) layer; `ffn` may be a user block."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn: list,
        dropout: float,
        eps: float,
        causal: bool,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.causal = causal
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")
        self.norm1 = keras.layers.LayerNormalization(epsilon=eps, name="norm1")
        self.ffn = ffn
        self.norm2 = keras.layers.LayerNormalization(epsilon=eps, name="norm2")
        self.dropout = keras.layers.Dropout(dropout)

    def build(self, input_shape: tuple) -> None:
        self.attention.build(input_shape, input_shape)
        self.norm1.build(input_shape)
        shape = input_shape
        for layer in self.ffn:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.norm2.build(input_shape)

    def call(self, x: object, training: bool | None = None) -> object:
        a = self.attention(x, x, use_causal_mask=self.causal, training=training)
        x = self.norm1(x + self.dropout(a, training=training))
        f = x
        for layer in self.ffn:
            f = layer(f, training=training)
        return self.norm2(x + self.dropout(f, training=training))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape


def feed_forward(dim: int, hidden: int, activation: str, name: str) -> list:
    return [
        keras.layers.Dense(hidden, activation=activation, name=f"{name}_inner"),
        keras.layers.Dense(dim, name=f"{name}_outer"),
    ]


class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """initial_learning_rate * gamma ** floor(step / step_size)."""

    def __init__(self, initial_learning_rate: float, step_size: int, gamma: float = 0.1) -> None:
        self.initial_learning_rate, self.step_size, self.gamma = (
            initial_learning_rate,
            step_size,
            gamma,
        )

    def __call__(self, step: object) -> object:
        k = keras.ops.floor(keras.ops.cast(step, "float32") / self.step_size)
        return self.initial_learning_rate * keras.ops.power(self.gamma, k)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "step_size": self.step_size,
            "gamma": self.gamma,
        }


def device_scope(device: str) -> object:
    """`@ "cuda:0"` as a TensorFlow device scope, or a warning where that device is absent."""
    import contextlib

    import tensorflow as tf

    kind, _, index = device.partition(":")
    kind = {"cuda": "GPU", "gpu": "GPU", "tpu": "TPU", "cpu": "CPU"}.get(kind, kind.upper())
    if kind == "CPU" or tf.config.list_logical_devices(kind)[int(index or 0) :]:
        return tf.device(f"/{kind}:{index or 0}")
    warnings.warn(f"device {device!r} is not available here: layer stays on the CPU", stacklevel=2)
    return contextlib.nullcontext()
