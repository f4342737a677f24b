"""What the DSL knows: every layer type, its parameters, and the value vocabularies.

A layer's spec says which parameters it takes, in which positional order
(`Conv2D(32, (3,3), "relu")` means filters, kernel_size, activation), what type
and range each accepts, and whether the layer holds a block of sublayers or
wraps another layer. Validation and shape propagation both read from here, so
a layer exists in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The type of a parameter's value, as validation understands it."""

    POS_INT = "a positive integer"
    NONNEG_INT = "a non-negative integer"
    INT = "an integer"
    RATE = "a number in [0, 1)"  # dropout-like rates
    UNIT = "a number between 0 and 1"  # momentum-like factors, [0, 1]
    POS_FLOAT = "a positive number"
    NONNEG_FLOAT = "a non-negative number"
    FLOAT = "a number"
    BOOL = "true or false"
    ACTIVATION = "an activation name"
    CHOICE = "one of the listed names"
    STR = "a string"
    SIZE = "a positive integer or a tuple of positive integers"  # kernel/pool/strides
    DIMS = "a tuple of positive integers"  # target shapes
    LAYER = "a layer"  # the wrapped layer of TimeDistributed / Bidirectional


@dataclass(frozen=True)
class ParamSpec:
    name: str
    kind: Kind
    required: bool = False
    default: object = None
    choices: tuple[str, ...] = ()
    # For SIZE: how many entries a tuple must have (the layer's spatial rank).
    rank: int = 0


@dataclass(frozen=True)
class LayerSpec:
    name: str
    family: str
    params: tuple[ParamSpec, ...] = ()
    positional: tuple[str, ...] = ()
    block: bool = False  # takes `{ sublayers }`
    spatial_rank: int = 0  # 1, 2 or 3 for conv/pooling layers
    doc: str = ""

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)


ACTIVATIONS = frozenset(
    {
        "relu",
        "sigmoid",
        "tanh",
        "softmax",
        "log_softmax",
        "linear",
        "elu",
        "selu",
        "softplus",
        "softsign",
        "swish",
        "silu",
        "gelu",
        "leaky_relu",
        "relu6",
        "hard_sigmoid",
        "exponential",
        "mish",
    }
)

LOSSES = frozenset(
    {
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "binary_crossentropy",
        "mse",
        "mean_squared_error",
        "mae",
        "mean_absolute_error",
        "huber",
        "hinge",
        "kl_divergence",
        "kld",
        "cosine_similarity",
        "poisson",
        "log_cosh",
        "nll",
    }
)

# Canonical spelling; the DSL accepts any letter case (`"adam"`, `Sgd`).
OPTIMIZERS = ("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam")

# Metrics every backend computes under these names.
METRICS = (
    "accuracy",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "top_k_categorical_accuracy",
    "mae",
    "mse",
)

# Which parameters each optimizer takes (Keras' names and meanings).
_CLIP = ("learning_rate", "weight_decay", "clipnorm", "clipvalue")
_ADAM = (*_CLIP, "beta_1", "beta_2", "epsilon")
OPTIMIZER_ACCEPTS: dict[str, tuple[str, ...]] = {
    "Adam": (*_ADAM, "amsgrad"),
    "AdamW": (*_ADAM, "amsgrad"),
    "Adamax": _ADAM,
    "Nadam": _ADAM,
    "SGD": (*_CLIP, "momentum", "nesterov"),
    "RMSprop": (*_CLIP, "rho", "momentum", "epsilon"),
    "Adagrad": (*_CLIP, "epsilon"),
    "Adadelta": (*_CLIP, "rho", "epsilon"),
}

OPTIMIZER_PARAMS: dict[str, Kind] = {
    "learning_rate": Kind.POS_FLOAT,
    "momentum": Kind.UNIT,
    "nesterov": Kind.BOOL,
    "beta_1": Kind.UNIT,
    "beta_2": Kind.UNIT,
    "epsilon": Kind.POS_FLOAT,
    "weight_decay": Kind.NONNEG_FLOAT,
    "rho": Kind.UNIT,
    "amsgrad": Kind.BOOL,
    "clipnorm": Kind.POS_FLOAT,
    "clipvalue": Kind.POS_FLOAT,
}

# Learning-rate schedules: positional order follows Keras.
SCHEDULES: dict[str, tuple[ParamSpec, ...]] = {
    "ExponentialDecay": (
        ParamSpec("initial_learning_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("decay_steps", Kind.POS_INT, required=True),
        ParamSpec("decay_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("staircase", Kind.BOOL, default=False),
    ),
    "InverseTimeDecay": (
        ParamSpec("initial_learning_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("decay_steps", Kind.POS_INT, required=True),
        ParamSpec("decay_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("staircase", Kind.BOOL, default=False),
    ),
    "PolynomialDecay": (
        ParamSpec("initial_learning_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("decay_steps", Kind.POS_INT, required=True),
        ParamSpec("end_learning_rate", Kind.NONNEG_FLOAT, default=0.0001),
        ParamSpec("power", Kind.POS_FLOAT, default=1.0),
    ),
    "CosineDecay": (
        ParamSpec("initial_learning_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("decay_steps", Kind.POS_INT, required=True),
        ParamSpec("alpha", Kind.UNIT, default=0.0),
    ),
    "StepDecay": (
        ParamSpec("initial_learning_rate", Kind.POS_FLOAT, required=True),
        ParamSpec("step_size", Kind.POS_INT, required=True),
        ParamSpec("gamma", Kind.POS_FLOAT, default=0.1),
    ),
}

SEARCH_METHODS = ("random", "grid", "bayesian", "tpe")

# Devices: `cpu`, `gpu`, `cuda`, `tpu`, `mps`, optionally with an index (`cuda:1`), or `auto`.
DEVICE_KINDS = ("cpu", "gpu", "cuda", "tpu", "mps")


# ---------------------------------------------------------------- layer table
def _p(name: str, kind: Kind, **kw: object) -> ParamSpec:
    return ParamSpec(name, kind, **kw)  # type: ignore[arg-type]


ACT = _p("activation", Kind.ACTIVATION)
PADDING = ("valid", "same")


def _conv(name: str, rank: int, extra: tuple[ParamSpec, ...] = ()) -> LayerSpec:
    padding = (*PADDING, "causal") if rank == 1 else PADDING
    return LayerSpec(
        name,
        "conv",
        (
            _p("filters", Kind.POS_INT, required=True),
            _p("kernel_size", Kind.SIZE, required=True, rank=rank),
            ACT,
            _p("strides", Kind.SIZE, default=1, rank=rank),
            _p("padding", Kind.CHOICE, default="valid", choices=padding),
            _p("dilation_rate", Kind.SIZE, default=1, rank=rank),
            _p("use_bias", Kind.BOOL, default=True),
            *extra,
        ),
        positional=("filters", "kernel_size", "activation"),
        spatial_rank=rank,
    )


def _pool(name: str, rank: int) -> LayerSpec:
    return LayerSpec(
        name,
        "pooling",
        (
            _p("pool_size", Kind.SIZE, default=2, rank=rank),
            _p("strides", Kind.SIZE, rank=rank),  # defaults to pool_size
            _p("padding", Kind.CHOICE, default="valid", choices=PADDING),
        ),
        positional=("pool_size", "strides", "padding"),
        spatial_rank=rank,
    )


def _global_pool(name: str, rank: int) -> LayerSpec:
    return LayerSpec(
        name, "pooling", (_p("keepdims", Kind.BOOL, default=False),), spatial_rank=rank
    )


_RNN_PARAMS = (
    _p("units", Kind.POS_INT, required=True),
    ACT,
    _p("return_sequences", Kind.BOOL, default=False),
    _p("dropout", Kind.RATE, default=0.0),
    _p("recurrent_dropout", Kind.RATE, default=0.0),
    _p("go_backwards", Kind.BOOL, default=False),
    _p("use_bias", Kind.BOOL, default=True),
)


def _rnn(name: str) -> LayerSpec:
    return LayerSpec(name, "recurrent", _RNN_PARAMS, positional=("units",))


def _cell(name: str) -> LayerSpec:
    return LayerSpec(
        name,
        "recurrent",
        (_p("units", Kind.POS_INT, required=True), ACT, _p("dropout", Kind.RATE, default=0.0)),
        positional=("units",),
        doc="One recurrent step: (features) -> (units).",
    )


def _merge(name: str, extra: tuple[ParamSpec, ...] = ()) -> LayerSpec:
    return LayerSpec(
        name, "merge", extra, positional=tuple(p.name for p in extra), doc="Merges branches."
    )


_TRANSFORMER = (
    _p("num_heads", Kind.POS_INT, required=True),
    _p("ff_dim", Kind.POS_INT, required=True),
    _p("dropout", Kind.RATE, default=0.0),
    _p("activation", Kind.ACTIVATION, default="relu"),
    _p("epsilon", Kind.POS_FLOAT, default=1e-5),
)

_DENSE = (
    _p("units", Kind.POS_INT, required=True),
    ACT,
    _p("use_bias", Kind.BOOL, default=True),
)

_SPECS: tuple[LayerSpec, ...] = (
    # core
    LayerSpec("Dense", "core", _DENSE, positional=("units", "activation")),
    LayerSpec(
        "Output",
        "output",
        _DENSE,
        positional=("units", "activation"),
        doc="The final fully connected layer; same computation as Dense.",
    ),
    LayerSpec("Dropout", "core", (_p("rate", Kind.RATE, required=True),), positional=("rate",)),
    LayerSpec("Flatten", "core"),
    LayerSpec(
        "Activation",
        "core",
        (_p("function", Kind.ACTIVATION, required=True), _p("alpha", Kind.FLOAT)),
        positional=("function",),
    ),
    LayerSpec(
        "Reshape",
        "core",
        (_p("target_shape", Kind.DIMS, required=True),),
        positional=("target_shape",),
    ),
    LayerSpec(
        "GaussianNoise",
        "core",
        (_p("stddev", Kind.NONNEG_FLOAT, required=True),),
        positional=("stddev",),
    ),
    LayerSpec(
        "Lambda",
        "core",
        (_p("function", Kind.STR, required=True),),
        positional=("function",),
        doc="Kept as data only: the platform never executes code from a program.",
    ),
    LayerSpec(
        "CustomShape",
        "core",
        (_p("layer", Kind.STR, required=True), _p("custom_dims", Kind.DIMS, required=True)),
        positional=("layer", "custom_dims"),
        doc="Declares the output shape of a layer the DSL cannot infer.",
    ),
    # convolution
    _conv("Conv1D", 1),
    _conv("Conv2D", 2),
    _conv("Conv3D", 3),
    _conv("Conv2DTranspose", 2),
    _conv("SeparableConv2D", 2, (_p("depth_multiplier", Kind.POS_INT, default=1),)),
    LayerSpec(
        "DepthwiseConv2D",
        "conv",
        (
            _p("kernel_size", Kind.SIZE, required=True, rank=2),
            _p("strides", Kind.SIZE, default=1, rank=2),
            _p("padding", Kind.CHOICE, default="valid", choices=PADDING),
            _p("depth_multiplier", Kind.POS_INT, default=1),
            ACT,
            _p("use_bias", Kind.BOOL, default=True),
        ),
        positional=("kernel_size", "strides", "padding"),
        spatial_rank=2,
    ),
    # pooling
    _pool("MaxPooling1D", 1),
    _pool("MaxPooling2D", 2),
    _pool("MaxPooling3D", 3),
    _pool("AveragePooling1D", 1),
    _pool("AveragePooling2D", 2),
    _pool("AveragePooling3D", 3),
    _global_pool("GlobalMaxPooling1D", 1),
    _global_pool("GlobalMaxPooling2D", 2),
    _global_pool("GlobalMaxPooling3D", 3),
    _global_pool("GlobalAveragePooling1D", 1),
    _global_pool("GlobalAveragePooling2D", 2),
    _global_pool("GlobalAveragePooling3D", 3),
    # recurrent
    _rnn("SimpleRNN"),
    _rnn("LSTM"),
    _rnn("GRU"),
    _cell("SimpleRNNCell"),
    _cell("LSTMCell"),
    _cell("GRUCell"),
    LayerSpec(
        "SimpleRNNDropoutWrapper",
        "recurrent",
        _RNN_PARAMS,
        positional=("units",),
        doc="SimpleRNN with input dropout.",
    ),
    LayerSpec(
        "Bidirectional",
        "wrapper",
        (
            _p("layer", Kind.LAYER, required=True),
            _p(
                "merge_mode", Kind.CHOICE, default="concat", choices=("concat", "sum", "mul", "ave")
            ),
        ),
        positional=("layer", "merge_mode"),
    ),
    LayerSpec(
        "TimeDistributed",
        "wrapper",
        (_p("layer", Kind.LAYER, required=True), _p("dropout", Kind.RATE)),
        positional=("layer",),
        block=True,
        doc="Applies the layer (then `dropout`, then the block) to every time step.",
    ),
    # attention / transformer
    LayerSpec(
        "Attention",
        "attention",
        (_p("use_scale", Kind.BOOL, default=False), _p("dropout", Kind.RATE, default=0.0)),
        doc="Dot-product self-attention over the sequence.",
    ),
    LayerSpec(
        "MultiHeadAttention",
        "attention",
        (
            _p("num_heads", Kind.POS_INT, required=True),
            _p("key_dim", Kind.POS_INT),
            _p("dropout", Kind.RATE, default=0.0),
        ),
        positional=("num_heads", "key_dim"),
    ),
    LayerSpec(
        "TransformerEncoder",
        "attention",
        _TRANSFORMER,
        positional=("num_heads", "ff_dim"),
        block=True,
        doc="Self-attention + feed-forward with residuals and layer norms; a block replaces "
        "the feed-forward part.",
    ),
    LayerSpec(
        "TransformerDecoder",
        "attention",
        _TRANSFORMER,
        positional=("num_heads", "ff_dim"),
        block=True,
        doc="Causal self-attention + feed-forward; a block replaces the feed-forward part.",
    ),
    LayerSpec(
        "GraphAttention",
        "attention",
        (
            _p("num_heads", Kind.POS_INT, required=True),
            _p("units", Kind.POS_INT),
            _p("dropout", Kind.RATE, default=0.0),
        ),
        positional=("num_heads", "units"),
        doc="GAT over the node axis of (nodes, features), every node attending to every node.",
    ),
    # normalization
    LayerSpec(
        "BatchNormalization",
        "normalization",
        (
            _p("momentum", Kind.UNIT, default=0.99),
            _p("epsilon", Kind.POS_FLOAT, default=1e-3),
            _p("center", Kind.BOOL, default=True),
            _p("scale", Kind.BOOL, default=True),
        ),
    ),
    LayerSpec(
        "LayerNormalization",
        "normalization",
        (
            _p("epsilon", Kind.POS_FLOAT, default=1e-3),
            _p("center", Kind.BOOL, default=True),
            _p("scale", Kind.BOOL, default=True),
        ),
    ),
    LayerSpec(
        "InstanceNormalization",
        "normalization",
        (
            _p("epsilon", Kind.POS_FLOAT, default=1e-3),
            _p("center", Kind.BOOL, default=True),
            _p("scale", Kind.BOOL, default=True),
        ),
    ),
    LayerSpec(
        "GroupNormalization",
        "normalization",
        (
            _p("groups", Kind.POS_INT, default=32),
            _p("epsilon", Kind.POS_FLOAT, default=1e-3),
            _p("center", Kind.BOOL, default=True),
            _p("scale", Kind.BOOL, default=True),
        ),
        positional=("groups",),
    ),
    # embedding
    LayerSpec(
        "Embedding",
        "embedding",
        (
            _p("input_dim", Kind.POS_INT, required=True),
            _p("output_dim", Kind.POS_INT, required=True),
            _p("mask_zero", Kind.BOOL, default=False),
        ),
        positional=("input_dim", "output_dim"),
        doc="Token ids (steps) -> vectors (steps, output_dim).",
    ),
    # merge
    _merge("Add"),
    _merge("Subtract"),
    _merge("Multiply"),
    _merge("Average"),
    _merge("Maximum"),
    _merge("Minimum"),
    _merge("Concatenate", (_p("axis", Kind.INT, default=-1),)),
    # structural blocks
    LayerSpec(
        "ResidualConnection",
        "residual",
        block=True,
        doc="block(x) + x; a 1x1 projection is added to the shortcut when the shapes differ.",
    ),
    LayerSpec("Residual", "residual", block=True, doc="Same as ResidualConnection."),
    LayerSpec(
        "Inception",
        "residual",
        (
            _p("filters_1x1", Kind.POS_INT, default=64),
            _p("filters_3x3", Kind.POS_INT, default=128),
            _p("filters_5x5", Kind.POS_INT, default=32),
            _p("filters_pool", Kind.POS_INT, default=32),
        ),
        doc="Parallel 1x1, 3x3, 5x5 convolutions and a pooled 1x1 projection, concatenated.",
    ),
    LayerSpec(
        "SqueezeExcitation",
        "attention",
        (_p("ratio", Kind.POS_INT, default=16),),
        positional=("ratio",),
        doc="Channel attention: global pool, bottleneck Dense(C/ratio), Dense(C), rescale.",
    ),
    LayerSpec(
        "CapsuleLayer",
        "core",
        (
            _p("num_capsules", Kind.POS_INT, default=10),
            _p("dim_capsules", Kind.POS_INT, default=16),
            _p("routings", Kind.POS_INT, default=3),
        ),
        positional=("num_capsules", "dim_capsules", "routings"),
        doc="Dynamic routing from (capsules_in, dim_in) to (num_capsules, dim_capsules).",
    ),
    LayerSpec(
        "QuantumLayer",
        "core",
        (_p("n_qubits", Kind.POS_INT, default=4), _p("n_layers", Kind.POS_INT, default=1)),
        positional=("n_qubits", "n_layers"),
        doc="A simulated variational circuit: angle-encodes (n_qubits) features, returns the "
        "n_qubits Pauli-Z expectations; 3 rotation angles per qubit per layer.",
    ),
)

LAYERS: dict[str, LayerSpec] = {s.name: s for s in _SPECS}
_BY_LOWER: dict[str, LayerSpec] = {s.name.lower(): s for s in _SPECS}

# The pseudo-layer holding a multi-input branch (`image: { ... }`).
BRANCH = "Branch"

# Hard caps on single values, so one number cannot ask for an absurd model.
MAX_UNITS = 1_000_000_000
MAX_KERNEL = 4096


def lookup_layer(name: str) -> LayerSpec | None:
    """Layer names are case-insensitive (`dense`, `DENSE`); the spec carries the canonical one."""
    return _BY_LOWER.get(name.lower())


def lookup_optimizer(name: str) -> str | None:
    return next((o for o in OPTIMIZERS if o.lower() == name.lower()), None)


def lookup_schedule(name: str) -> str | None:
    return next((s for s in SCHEDULES if s.lower() == name.lower()), None)
