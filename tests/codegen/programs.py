"""Small programs that together use every layer type the backends support."""

from __future__ import annotations


def program(input_shape: str, layers: str, extra: str = "") -> str:
    body = "\n".join(f"    {line.strip()}" for line in layers.strip().splitlines())
    return f"network P {{\n  input: {input_shape}\n  layers:\n{body}\n  {extra}\n}}\n"


PROGRAMS: dict[str, str] = {
    "conv2d": program(
        "(16, 16, 3)",
        """
        Conv2D(8, (3,3), "relu", padding="same")
        BatchNormalization()
        DepthwiseConv2D((3,3), padding="same", depth_multiplier=2)
        SeparableConv2D(8, (3,3), strides=2, padding="same")
        MaxPooling2D((2,2), padding="same")
        AveragePooling2D((2,2), strides=1, padding="same")
        SqueezeExcitation(ratio=4)
        GroupNormalization(groups=4)
        InstanceNormalization()
        Conv2DTranspose(4, (3,3), strides=2)
        Conv2D(4, (3,3), dilation_rate=2)
        GlobalAveragePooling2D()
        Dense(10, "softmax")
        """,
    ),
    # Dense and Output act on the last axis of any rank (Keras' Dense, torch's Linear)
    "dense_last_axis": program(
        "(6, 5, 3)",
        """
        Dense(4, "relu")
        Conv2D(2, (3,3))
        Output(3, "softmax")
        """,
    ),
    "residual": program(
        "(8, 8, 4)",
        """
        ResidualConnection {
          Conv2D(4, (3,3), "relu", padding="same")
          Conv2D(4, (3,3), padding="same")
        }
        Activation("relu")
        ResidualConnection { Conv2D(8, (3,3), strides=2, padding="same") }
        Flatten()
        ResidualConnection { Dense(16, "tanh") }
        Dense(3)
        """,
    ),
    "conv1d_3d": program(
        "(20, 6)",
        """
        Conv1D(8, 3, "relu", padding="causal", dilation_rate=2)
        MaxPooling1D(2)
        AveragePooling1D(2, padding="same")
        Conv1D(4, 2, strides=2)
        GlobalMaxPooling1D()
        """,
    ),
    "conv3d": program(
        "(6, 6, 6, 2)",
        """
        Conv3D(4, (3,3,3), padding="same")
        MaxPooling3D((2,2,2))
        AveragePooling3D((1,1,1))
        GlobalAveragePooling3D(keepdims=true)
        Flatten()
        """,
    ),
    "recurrent": program(
        "(7, 5)",
        """
        LSTM(6, return_sequences=true)
        GRU(4, return_sequences=true)
        SimpleRNN(5, return_sequences=true, activation="relu")
        Bidirectional(LSTM(3, return_sequences=true))
        Bidirectional(GRU(3), merge_mode="sum")
        Dense(2)
        """,
    ),
    "attention": program(
        "(6, 8)",
        """
        MultiHeadAttention(num_heads=2, key_dim=3)
        LayerNormalization()
        Attention(use_scale=true)
        TransformerEncoder(num_heads=2, ff_dim=16)
        TransformerDecoder(num_heads=4, ff_dim=8)
        TransformerEncoder(num_heads=2, ff_dim=8) { Dense(8, "relu") }
        GlobalAveragePooling1D()
        Output(3, "softmax")
        """,
    ),
    "embedding": program(
        "(10)",
        """
        Embedding(50, 8)
        SimpleRNN(6)
        Dense(2, "sigmoid")
        """,
    ),
    "time_distributed": program(
        "(4, 6)",
        """
        TimeDistributed(Dense(5, "relu"), dropout=0.1) { Dense(3) }
        Flatten()
        Reshape((4, 3))
        GaussianNoise(0.1)
        Activation("leaky_relu", alpha=0.1)
        Flatten()
        Dropout(0.3)
        Dense(2)
        """,
    ),
    "branches": """
network P {
  input: { image: (8, 8, 1), meta: (5) }
  layers:
    image: { Conv2D(2, (3,3)) Flatten() }
    meta: { Dense(4, "relu") }
    Concatenate()
    Dense(3)
}
""",
    "merges": """
network P {
  input: { a: (6), b: (6) }
  layers:
    a: { Dense(4) }
    b: { Dense(4) }
    Add()
    Dense(4)
}
""",
    "activations": program(
        "(6)",
        """
        Dense(6, "elu")
        Dense(6, "selu")
        Dense(6, "softplus")
        Dense(6, "softsign")
        Dense(6, "swish")
        Dense(6, "gelu")
        Dense(6, "relu6")
        Dense(6, "hard_sigmoid")
        Dense(6, "mish")
        Dense(6, "tanh")
        Dense(6, "sigmoid")
        Dense(6, "log_softmax")
        Dense(6, "linear", use_bias=false)
        """,
    ),
}

# Per layer type of the torch model, how many more parameters torch keeps than Keras:
# its second recurrent bias (zero in a model converted from Keras) per gate.
TORCH_EXTRA_BIAS_GATES = {"LSTM": 4, "SimpleRNN": 1, "SimpleRNNDropoutWrapper": 1}
