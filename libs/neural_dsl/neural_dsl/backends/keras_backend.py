"""IR -> TensorFlow/Keras: the live functional model and the generated `.py`, from one lowering.

The lowering is a list of statements `target = Layer(...)(inputs)`. The live builder runs
them on Keras tensors; the code generator prints them. Keras is channels-last like the DSL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ir import Layer, Network, Schedule
from ..shapes import LayerShape, ShapeReport
from .common import (
    Ctor,
    ctor,
    first_layer,
    helper_source,
    instantiate,
    python_name,
    render,
    settings,
    unsupported,
    used_names,
)

BACKEND = "tensorflow"
Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class Stmt:
    target: str
    layer: Ctor | None  # None: `target = inputs[0]`
    inputs: tuple[str, ...]
    call: str = "one"  # "one": f(x) | "list": f([a, b]) | "self": f(x, x) | "pair": f([x, x])
    device: str | None = None


# ---------------------------------------------------------------- single Keras layers
def _leaf(layer: Layer) -> str:
    return layer.name.rsplit("/", 1)[-1]


def _conv(layer: Layer, name: str) -> Ctor:
    common = {
        "strides": layer.get("strides", 1),
        "padding": layer.get("padding", "valid"),
        "activation": layer.get("activation"),
        "use_bias": layer.get("use_bias", True),
        "name": name,
    }
    if layer.type == "DepthwiseConv2D":
        return ctor(
            "layers.DepthwiseConv2D",
            layer.get("kernel_size"),
            depth_multiplier=layer.get("depth_multiplier", 1),
            **common,
        )
    common["dilation_rate"] = layer.get("dilation_rate", 1)
    if layer.type == "SeparableConv2D":
        common["depth_multiplier"] = layer.get("depth_multiplier", 1)
    return ctor(f"layers.{layer.type}", layer.get("filters"), layer.get("kernel_size"), **common)


def _pool(layer: Layer, name: str) -> Ctor:
    pool = layer.get("pool_size", 2)
    return ctor(
        f"layers.{layer.type}",
        pool_size=pool,
        strides=layer.get("strides", pool),
        padding=layer.get("padding", "valid"),
        name=name,
    )


def _rnn(layer: Layer, name: str) -> Ctor:
    cls = "SimpleRNN" if layer.type == "SimpleRNNDropoutWrapper" else layer.type
    return ctor(
        f"layers.{cls}",
        layer.get("units"),
        activation=layer.get("activation") or "tanh",
        return_sequences=layer.get("return_sequences", False),
        dropout=layer.get("dropout", 0.0),
        recurrent_dropout=layer.get("recurrent_dropout", 0.0),
        go_backwards=layer.get("go_backwards", False),
        use_bias=layer.get("use_bias", True),
        name=name,
    )


def _norm(layer: Layer, name: str) -> Ctor:
    flags = {"center": layer.get("center", True), "scale": layer.get("scale", True)}
    eps = layer.get("epsilon", 1e-3)
    if layer.type == "BatchNormalization":
        return ctor(
            "layers.BatchNormalization",
            momentum=layer.get("momentum", 0.99),
            epsilon=eps,
            name=name,
            **flags,
        )
    if layer.type == "LayerNormalization":
        return ctor("layers.LayerNormalization", epsilon=eps, name=name, **flags)
    groups = -1 if layer.type == "InstanceNormalization" else layer.get("groups", 32)
    return ctor("layers.GroupNormalization", groups=groups, epsilon=eps, name=name, **flags)


def _activation(layer: Layer, name: str) -> Ctor:
    fn, alpha = layer.get("function"), layer.get("alpha")
    if fn == "leaky_relu":
        return ctor("layers.LeakyReLU", negative_slope=0.2 if alpha is None else alpha, name=name)
    return ctor("layers.Activation", fn, name=name)


_SINGLE: dict[str, Callable[[Layer, str], Ctor]] = {
    "Dense": lambda la, n: ctor(
        "layers.Dense",
        la.get("units"),
        activation=la.get("activation"),
        use_bias=la.get("use_bias", True),
        name=n,
    ),
    "Dropout": lambda la, n: ctor("layers.Dropout", la.get("rate"), name=n),
    "Flatten": lambda la, n: ctor("layers.Flatten", name=n),
    "Activation": _activation,
    "Reshape": lambda la, n: ctor("layers.Reshape", la.get("target_shape"), name=n),
    "GaussianNoise": lambda la, n: ctor("layers.GaussianNoise", la.get("stddev"), name=n),
    **{
        t: _conv
        for t in (
            "Conv1D",
            "Conv2D",
            "Conv3D",
            "SeparableConv2D",
            "DepthwiseConv2D",
            "Conv2DTranspose",
        )
    },
    **{f"{k}Pooling{n}D": _pool for k in ("Max", "Average") for n in (1, 2, 3)},
    **{
        f"Global{k}Pooling{n}D": (
            lambda la, n: ctor(f"layers.{la.type}", keepdims=la.get("keepdims", False), name=n)
        )
        for k in ("Max", "Average")
        for n in (1, 2, 3)
    },
    **{t: _rnn for t in ("SimpleRNN", "SimpleRNNDropoutWrapper", "LSTM", "GRU")},
    "Bidirectional": lambda la, n: ctor(
        "layers.Bidirectional",
        _rnn(la.wrapped, f"{n}_layer"),
        merge_mode=la.get("merge_mode", "concat"),
        name=n,
    ),
    **{
        t: _norm
        for t in (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "InstanceNormalization",
        )
    },
    "Embedding": lambda la, n: ctor(
        "layers.Embedding",
        la.get("input_dim"),
        la.get("output_dim"),
        mask_zero=la.get("mask_zero", False),
        name=n,
    ),
}
_SINGLE["Output"] = _SINGLE["Dense"]

_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")


def single(layer: Layer, name: str | None = None) -> Ctor:
    """A layer that is exactly one Keras layer (what wrappers and blocks may hold)."""
    fn = _SINGLE.get(layer.type)
    if fn is None or (layer.type == "Bidirectional" and layer.wrapped.type not in _RNN):
        raise unsupported(
            layer, BACKEND, "inside a wrapper or block" if layer.type in LOWER else ""
        )
    return fn(layer, name or _leaf(layer))


_RNN = ("SimpleRNN", "SimpleRNNDropoutWrapper", "LSTM", "GRU")


# ---------------------------------------------------------------- statements
@dataclass
class _Gen:
    stmts: list[Stmt] = field(default_factory=list)
    counter: int = 0

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}_{self.counter}"

    def emit(self, layer: Layer, ls: LayerShape, x: str) -> str:
        """Statements applying `layer` to variable `x`; returns the variable holding the output."""
        t, name = layer.type, _leaf(layer)
        if t in ("ResidualConnection", "Residual"):
            shortcut = self.fresh("shortcut")
            self.stmts.append(Stmt(shortcut, None, (x,)))
            for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
                x = self.emit(sub, sub_ls, x)
            shape, out = ls.input_shape, ls.output_shape
            if tuple(shape) != tuple(out):
                if len(shape) == 1:
                    proj = ctor("layers.Dense", out[0], name=f"{name}_projection")
                else:
                    rank = len(shape) - 1
                    strides = tuple(-(-a // b) for a, b in zip(shape[:-1], out[:-1], strict=True))
                    proj = ctor(
                        f"layers.Conv{rank}D",
                        out[-1],
                        (1,) * rank,
                        strides=strides,
                        name=f"{name}_projection",
                    )
                self.stmts.append(Stmt(shortcut, proj, (shortcut,)))
            self.stmts.append(Stmt(x, ctor("layers.Add", name=name), (x, shortcut), "list"))
            return x
        if t in ("TransformerEncoder", "TransformerDecoder"):
            d = ls.input_shape[-1]
            if layer.sublayers:
                ffn: Any = [single(s) for s in layer.sublayers]
            else:
                ffn = ctor(
                    "feed_forward",
                    d,
                    layer.get("ff_dim"),
                    layer.get("activation", "relu"),
                    f"{name}_ffn",
                )
            block = ctor(
                "TransformerBlock",
                d,
                layer.get("num_heads"),
                ffn,
                layer.get("dropout", 0.0),
                layer.get("epsilon", 1e-5),
                t == "TransformerDecoder",
                name=name,
            )
            self.stmts.append(Stmt(x, block, (x,), device=layer.device))
            return x
        if t == "TimeDistributed":
            self.stmts.append(
                Stmt(
                    x,
                    ctor("layers.TimeDistributed", single(layer.wrapped), name=name),
                    (x,),
                    device=layer.device,
                )
            )
            if layer.get("dropout") is not None:
                self.stmts.append(
                    Stmt(
                        x,
                        ctor("layers.Dropout", layer.get("dropout"), name=f"{name}_dropout"),
                        (x,),
                    )
                )
            for sub in layer.sublayers:
                wrapped = ctor(
                    "layers.TimeDistributed", single(sub, f"{_leaf(sub)}_inner"), name=_leaf(sub)
                )
                self.stmts.append(Stmt(x, wrapped, (x,)))
            return x
        if t == "Attention":
            att = ctor(
                "layers.Attention",
                use_scale=layer.get("use_scale", False),
                dropout=layer.get("dropout", 0.0),
                name=name,
            )
            self.stmts.append(Stmt(x, att, (x,), "pair", layer.device))
            return x
        if t == "MultiHeadAttention":
            d, heads = ls.input_shape[-1], layer.get("num_heads")
            mha = ctor(
                "layers.MultiHeadAttention",
                heads,
                layer.get("key_dim") or max(1, d // heads),
                dropout=layer.get("dropout", 0.0),
                name=name,
            )
            self.stmts.append(Stmt(x, mha, (x,), "self", layer.device))
            return x
        if t == "SqueezeExcitation":
            c, rank = ls.input_shape[-1], len(ls.input_shape) - 1
            s = self.fresh("scale")
            self.stmts += [
                Stmt(
                    s,
                    ctor(f"layers.GlobalAveragePooling{rank}D", keepdims=True, name=f"{name}_pool"),
                    (x,),
                ),
                Stmt(
                    s,
                    ctor(
                        "layers.Dense",
                        max(1, c // layer.get("ratio", 16)),
                        activation="relu",
                        name=f"{name}_squeeze",
                    ),
                    (s,),
                ),
                Stmt(s, ctor("layers.Dense", c, activation="sigmoid", name=f"{name}_excite"), (s,)),
                Stmt(x, ctor("layers.Multiply", name=name), (x, s), "list"),
            ]
            return x
        if t not in _SINGLE:
            raise unsupported(layer, BACKEND)
        self.stmts.append(Stmt(x, single(layer), (x,), device=layer.device))
        return x


LOWER = set(_SINGLE) | {
    "ResidualConnection",
    "Residual",
    "TransformerEncoder",
    "TransformerDecoder",
    "TimeDistributed",
    "Attention",
    "MultiHeadAttention",
    "SqueezeExcitation",
    *_MERGES,
}


@dataclass(frozen=True)
class Program:
    inputs: tuple[tuple[str, str, Shape], ...]  # (variable, keras input name, shape)
    stmts: tuple[Stmt, ...]
    output: str


def lower(network: Network, report: ShapeReport) -> Program:
    gen = _Gen()
    leaf_names = {_leaf(layer) for layer in network.walk()}
    inputs = []
    for i, inp in enumerate(network.inputs):
        keras_name = inp.name if inp.name not in leaf_names else f"{inp.name}_input"
        inputs.append((f"input_{i}", keras_name, inp.sample_shape))
    names = [i.name for i in network.inputs]
    x = "x"
    gen.stmts.append(Stmt(x, None, ("input_0",)))
    branches: list[str] = []
    for layer, ls in zip(network.layers, report.layers, strict=True):
        if layer.type == "Branch":
            var = f"branch_{len(branches)}"
            gen.stmts.append(Stmt(var, None, (f"input_{names.index(layer.get('input'))}",)))
            for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
                gen.emit(sub, sub_ls, var)
            branches.append(var)
        elif layer.type in _MERGES:
            merge = ctor(f"layers.{layer.type}", name=_leaf(layer))
            if layer.type == "Concatenate":
                merge = ctor("layers.Concatenate", axis=layer.get("axis", -1), name=_leaf(layer))
            gen.stmts.append(Stmt(x, merge, tuple(branches), "list"))
            branches = []
        else:
            gen.emit(layer, ls, x)
    return Program(tuple(inputs), tuple(gen.stmts), x)


# ---------------------------------------------------------------- compile settings
_LOSS = {"kld": "kl_divergence", "nll": "sparse_categorical_crossentropy"}


def optimizer_ctor(network: Network) -> Ctor:
    opt = network.optimizer
    if opt is None:
        return ctor("keras.optimizers.Adam")
    kwargs: dict[str, Any] = {}
    for p in opt.params:
        v = p.value
        if isinstance(v, Schedule):
            fn = "StepDecay" if v.type == "StepDecay" else f"keras.optimizers.schedules.{v.type}"
            v = ctor(fn, **{q.name: q.value for q in v.params})
        kwargs[p.name] = v
    return ctor(f"keras.optimizers.{opt.type}", **kwargs)


def namespace() -> dict[str, Any]:
    import keras
    from keras import layers

    from ..runtime import keras_layers

    ns: dict[str, Any] = {"keras": keras, "layers": layers}
    ns.update({n: getattr(keras_layers, n) for n in dir(keras_layers) if not n.startswith("__")})
    return ns


# ---------------------------------------------------------------- live builder
def build_live(network: Network, report: ShapeReport, compile_model: bool = True) -> Any:
    """The network as a Keras functional model, compiled with the program's loss/optimizer."""
    import contextlib

    import keras

    from ..runtime import keras_layers

    prog = lower(network, report)
    ns = namespace()
    env: dict[str, Any] = {}
    model_inputs = []
    for (var, name, shape), inp in zip(prog.inputs, network.inputs, strict=True):
        dtype = "int32" if _takes_ids(network, inp.name) else "float32"
        env[var] = keras.Input(shape=shape, name=name, dtype=dtype)
        model_inputs.append(env[var])
    for s in prog.stmts:
        if s.layer is None:
            env[s.target] = env[s.inputs[0]]
            continue
        scope = keras_layers.device_scope(s.device) if s.device else contextlib.nullcontext()
        with scope:
            layer = instantiate(s.layer, ns)
            env[s.target] = _apply(layer, [env[v] for v in s.inputs], s.call)
    model = keras.Model(model_inputs, env[prog.output], name=python_name(network.name))
    if compile_model:
        model.compile(**compile_args(network, ns))
    return model


def _apply(layer: Any, args: list[Any], call: str) -> Any:
    if call == "list":
        return layer(args)
    if call == "self":
        return layer(args[0], args[0])
    if call == "pair":
        return layer([args[0], args[0]])
    return layer(args[0])


def _takes_ids(network: Network, input_name: str) -> bool:
    """An input that goes straight into an Embedding carries integer token ids."""
    first = first_layer(network, input_name)
    return first is not None and first.type == "Embedding"


def compile_args(network: Network, ns: dict[str, Any]) -> dict[str, Any]:
    s = settings(network)
    loss = s["loss"]
    return {
        "optimizer": instantiate(optimizer_ctor(network), ns),
        "loss": _LOSS.get(loss, loss) if loss else None,
        "metrics": list(s["metrics"]),
    }


# ---------------------------------------------------------------- code generation
def _call_text(s: Stmt) -> str:
    if s.layer is None:
        return s.inputs[0]
    layer = render(s.layer)
    if s.call == "list":
        return f"{layer}([{', '.join(s.inputs)}])"
    if s.call == "self":
        return f"{layer}({s.inputs[0]}, {s.inputs[0]})"
    if s.call == "pair":
        return f"{layer}([{s.inputs[0]}, {s.inputs[0]}])"
    return f"{layer}({s.inputs[0]})"


def generate(network: Network, report: ShapeReport) -> str:
    prog = lower(network, report)
    used: set[str] = set()
    opt = optimizer_ctor(network)
    for s in prog.stmts:
        used_names(s.layer, used)
    used_names(opt, used)
    if any(s.device for s in prog.stmts):
        used.add("device_scope")
    helpers = helper_source("keras_layers.py", used)
    st = settings(network)
    loss = _LOSS.get(st["loss"], st["loss"]) if st["loss"] else None
    body = []
    for (var, name, shape), inp in zip(prog.inputs, network.inputs, strict=True):
        dtype = "int32" if _takes_ids(network, inp.name) else "float32"
        body.append(
            f"    {var} = keras.Input(shape={render(shape)}, name={name!r}, dtype={dtype!r})"
        )
    for s in prog.stmts:
        line = f"    {s.target} = {_call_text(s)}"
        if s.device:
            body += [f"    with device_scope({s.device!r}):", "    " + line]
        else:
            body.append(line)
    inputs = ", ".join(v for v, _, _ in prog.inputs)
    model_name = python_name(network.name)
    return "\n".join(
        [
            f'"""TensorFlow/Keras model for the Neural DSL network {network.name!r}.',
            "",
            "Generated by neural_dsl from the network's IR (channels-last, as the DSL).",
            "build_model() returns an untrained Keras model compiled with the program's loss and",
            "optimizer (schedule included); TRAINING has epochs, batch size and validation split.",
            '"""',
            "",
            "from __future__ import annotations",
            "",
            "import warnings",
            "",
            "import keras",
            "from keras import layers",
            "",
            *(
                ["# ---- helpers (neural_dsl.runtime.keras_layers) ----", "", helpers, ""]
                if helpers
                else []
            ),
            f"LOSS = {render(loss)}",
            f"METRICS = {render(st['metrics'])}",
            f"TRAINING = {render_dict(st['training'])}",
            f"DEVICE = {render(st['device'])}",
            "",
            "",
            "def build_optimizer() -> keras.optimizers.Optimizer:",
            f"    return {render(opt)}",
            "",
            "",
            "def build_model() -> keras.Model:",
            *body,
            f"    model = keras.Model([{inputs}], {prog.output}, name={model_name!r})",
            "    model.compile(optimizer=build_optimizer(), loss=LOSS, metrics=METRICS)",
            "    return model",
            "",
        ]
    )


def render_dict(d: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in d.items()) + "}"
