"""IR -> PyTorch: the live `nn.Module` builder and the generated `.py` module, from one lowering."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ir import Layer, Network
from ..shapes import LayerShape, ShapeReport
from .common import (
    Ctor,
    ctor,
    helper_source,
    python_name,
    render,
    settings,
    unsupported,
    used_names,
)

BACKEND = "pytorch"
Shape = tuple[int | None, ...]


# ---------------------------------------------------------------- per-layer lowering
def _dense(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    return ctor(
        "Dense", shape[-1], layer.get("units"), layer.get("activation"), layer.get("use_bias", True)
    )


def _conv(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    rank = len(shape) - 1
    k = layer.get("kernel_size")
    s = layer.get("strides", (1,) * rank)
    d = layer.get("dilation_rate", (1,) * rank)
    pad, act, bias = (
        layer.get("padding", "valid"),
        layer.get("activation"),
        layer.get("use_bias", True),
    )
    c = shape[-1]
    if layer.type == "SeparableConv2D":
        return ctor(
            "SeparableConv",
            c,
            layer.get("filters"),
            k,
            s,
            d,
            pad,
            layer.get("depth_multiplier", 1),
            act,
            bias,
        )
    if layer.type == "DepthwiseConv2D":
        out = c * layer.get("depth_multiplier", 1)
        return ctor("Conv", 2, c, out, k, s, (1, 1), pad, act, bias, c)
    if layer.type == "Conv2DTranspose":
        if pad != "valid":
            raise unsupported(layer, BACKEND, "padding='same' (only 'valid')")
        return ctor("ConvTranspose", c, layer.get("filters"), k, s, d, act, bias)
    return ctor("Conv", rank, c, layer.get("filters"), k, s, d, pad, act, bias)


def _pool(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    rank = len(shape) - 1
    kind = "max" if layer.type.startswith("Max") else "avg"
    pool = layer.get("pool_size", (2,) * rank)
    return ctor("Pool", rank, kind, pool, layer.get("strides", pool), layer.get("padding", "valid"))


def _global_pool(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    kind = "max" if "Max" in layer.type else "avg"
    return ctor("GlobalPool", len(shape) - 1, kind, layer.get("keepdims", False))


_RNN_KIND = {"SimpleRNN": "RNN", "SimpleRNNDropoutWrapper": "RNN", "LSTM": "LSTM", "GRU": "GRU"}


def _recurrent(layer: Layer, shape: Shape, merge_mode: str | None = None) -> Ctor:
    kind = _RNN_KIND[layer.type]
    act = layer.get("activation") or "tanh"
    if act not in (("tanh", "relu") if kind == "RNN" else ("tanh",)):
        raise unsupported(layer, BACKEND, f"activation '{act}'")
    if layer.get("recurrent_dropout", 0.0) or layer.get("go_backwards", False):
        raise unsupported(layer, BACKEND, "recurrent_dropout and go_backwards")
    return ctor(
        "Recurrent",
        kind,
        shape[-1],
        layer.get("units"),
        layer.get("return_sequences", False),
        act,
        layer.get("dropout", 0.0),
        layer.get("use_bias", True),
        merge_mode,
    )


def _bidirectional(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    inner = layer.wrapped
    assert inner is not None
    if inner.type not in _RNN_KIND:
        raise unsupported(layer, BACKEND, f"wrapping {inner.type}")
    return _recurrent(inner, shape, layer.get("merge_mode", "concat"))


def _norm(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    if not (layer.get("center", True) and layer.get("scale", True)):
        raise unsupported(layer, BACKEND, "center/scale switched off")
    c = shape[-1]
    kind = {"BatchNormalization": "batch", "LayerNormalization": "layer"}.get(layer.type, "group")
    groups = c if layer.type == "InstanceNormalization" else layer.get("groups", 32)
    return ctor(
        "Norm", kind, c, len(shape), layer.get("epsilon", 1e-3), layer.get("momentum", 0.99), groups
    )


def _embedding(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    if layer.get("mask_zero", False):
        raise unsupported(layer, BACKEND, "mask_zero")
    return ctor("Embedding", layer.get("input_dim"), layer.get("output_dim"))


def _mha(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    d, heads = shape[-1], layer.get("num_heads")
    key_dim = layer.get("key_dim") or max(1, d // heads)
    return ctor("MultiHeadAttention", d, heads, key_dim, layer.get("dropout", 0.0), False)


def _transformer(layer: Layer, shape: Shape, out: Shape, subs: tuple[LayerShape, ...]) -> Ctor:
    d = shape[-1]
    if layer.sublayers:
        ffn = _seq(layer.sublayers, subs)
    else:
        ffn = ctor("FeedForward", d, layer.get("ff_dim"), layer.get("activation", "relu"))
    return ctor(
        "TransformerBlock",
        d,
        layer.get("num_heads"),
        ffn,
        layer.get("dropout", 0.0),
        layer.get("epsilon", 1e-5),
        layer.type == "TransformerDecoder",
    )


def _residual(layer: Layer, shape: Shape, out: Shape, subs: tuple[LayerShape, ...]) -> Ctor:
    projection = None
    if tuple(out) != tuple(shape):
        if len(shape) == 1:
            projection = ctor("Dense", shape[0], out[0], None, True)
        else:
            rank = len(shape) - 1
            strides = tuple(math.ceil(a / b) for a, b in zip(shape[:-1], out[:-1], strict=True))
            projection = ctor(
                "Conv",
                rank,
                shape[-1],
                out[-1],
                (1,) * rank,
                strides,
                (1,) * rank,
                "valid",
                None,
                True,
            )
    return ctor("Residual", _seq(layer.sublayers, subs), projection)


def _time_distributed(layer: Layer, shape: Shape, out: Shape, subs: tuple[LayerShape, ...]) -> Ctor:
    inner = layer.wrapped
    assert inner is not None
    after: list[tuple[str, Ctor]] = []
    if layer.get("dropout") is not None:
        after.append(("dropout", ctor("nn.Dropout", layer.get("dropout"))))
    after += _named(layer.sublayers, subs)
    return ctor("TimeDistributed", lower(inner, shape[1:], (), ()), ctor("Seq", after))


def _squeeze(layer: Layer, shape: Shape, *_: Any) -> Ctor:
    c = shape[-1]
    return ctor("SqueezeExcitation", c, max(1, c // layer.get("ratio", 16)))


_SIMPLE: dict[str, Callable[[Layer], Ctor]] = {
    "Dropout": lambda la: ctor("nn.Dropout", la.get("rate")),
    "Flatten": lambda la: ctor("Flatten"),
    "Activation": lambda la: ctor("Act", la.get("function"), la.get("alpha")),
    "Reshape": lambda la: ctor("Reshape", la.get("target_shape")),
    "GaussianNoise": lambda la: ctor("GaussianNoise", la.get("stddev")),
    "Attention": lambda la: ctor(
        "SelfAttention", la.get("use_scale", False), la.get("dropout", 0.0)
    ),
}

LOWER: dict[str, Callable[..., Ctor]] = {
    "Dense": _dense,
    "Output": _dense,
    **{t: (lambda la, *_, _f=f: _f(la)) for t, f in _SIMPLE.items()},
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
    **{f"Global{k}Pooling{n}D": _global_pool for k in ("Max", "Average") for n in (1, 2, 3)},
    **{t: (lambda la, shape, *_: _recurrent(la, shape)) for t in _RNN_KIND},
    "Bidirectional": _bidirectional,
    **{
        t: _norm
        for t in (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "InstanceNormalization",
        )
    },
    "Embedding": _embedding,
    "MultiHeadAttention": _mha,
    "TransformerEncoder": _transformer,
    "TransformerDecoder": _transformer,
    "ResidualConnection": _residual,
    "Residual": _residual,
    "TimeDistributed": _time_distributed,
    "SqueezeExcitation": _squeeze,
    **{
        t: (lambda la, *_: ctor("Merge", la.type, la.get("axis", -1)))
        for t in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
    },
}


def lower(layer: Layer, shape: Shape, out: Shape, subs: tuple[LayerShape, ...]) -> Ctor:
    fn = LOWER.get(layer.type)
    if fn is None:
        raise unsupported(layer, BACKEND)
    return fn(layer, shape, out, subs)


def _named(layers: tuple[Layer, ...], shapes: tuple[LayerShape, ...]) -> list[tuple[str, Ctor]]:
    return [
        (layer.name.rsplit("/", 1)[-1], lower(layer, ls.input_shape, ls.output_shape, ls.sublayers))
        for layer, ls in zip(layers, shapes, strict=True)
    ]


def _seq(layers: tuple[Layer, ...], shapes: tuple[LayerShape, ...]) -> Ctor:
    return ctor("Seq", _named(layers, shapes))


# ---------------------------------------------------------------- the network plan
@dataclass(frozen=True)
class Module:
    attr: str
    ctor: Ctor
    device: str | None


@dataclass(frozen=True)
class Step:
    kind: str  # "layer" (x = f(x)) | "branch" (a chain on one input) | "merge"
    attrs: tuple[str, ...]
    input_index: int = 0


@dataclass(frozen=True)
class Plan:
    modules: tuple[Module, ...]
    steps: tuple[Step, ...]
    input_names: tuple[str, ...]


def plan(network: Network, report: ShapeReport) -> Plan:
    modules: list[Module] = []
    steps: list[Step] = []
    names = [i.name for i in network.inputs]
    for layer, ls in zip(network.layers, report.layers, strict=True):
        if layer.type == "Branch":
            chain = []
            for sub, sub_ls in zip(layer.sublayers, ls.sublayers, strict=True):
                attr = sub.name.rsplit("/", 1)[-1]
                modules.append(
                    Module(
                        attr,
                        lower(sub, sub_ls.input_shape, sub_ls.output_shape, sub_ls.sublayers),
                        sub.device,
                    )
                )
                chain.append(attr)
            steps.append(Step("branch", tuple(chain), names.index(layer.get("input"))))
            continue
        c = lower(layer, ls.input_shape, ls.output_shape, ls.sublayers)
        modules.append(Module(layer.name, c, layer.device))
        kind = "merge" if c.fn == "Merge" else "layer"
        steps.append(Step(kind, (layer.name,)))
    if any(m.device for m in modules):
        # Once one layer is placed, the others are pinned to the CPU, so every input is
        # moved to where its layer lives.
        modules = [Module(m.attr, m.ctor, m.device or "cpu") for m in modules]
    return Plan(tuple(modules), tuple(steps), tuple(names))


def namespace() -> dict[str, Any]:
    import torch
    from torch import nn

    from ..runtime import torch_layers

    ns: dict[str, Any] = {"nn": nn, "torch": torch}
    ns.update({n: getattr(torch_layers, n) for n in dir(torch_layers) if not n.startswith("__")})
    return ns


# ---------------------------------------------------------------- live builder
def build_live(network: Network, report: ShapeReport) -> Any:
    """The network as a torch.nn.Module (channels-last inputs, one positional arg per input)."""
    from torch import nn

    from ..runtime import torch_layers
    from .common import instantiate

    p = plan(network, report)
    ns = namespace()

    class LiveNetwork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for m in p.modules:
                setattr(self, m.attr, torch_layers.place(instantiate(m.ctor, ns), m.device))

        def forward(self, *inputs: Any) -> Any:
            x = inputs[0]
            branches: list[Any] = []
            for step in p.steps:
                if step.kind == "branch":
                    b = inputs[step.input_index]
                    for attr in step.attrs:
                        b = torch_layers.on_device(getattr(self, attr), b)
                    branches.append(b)
                elif step.kind == "merge":
                    x, branches = torch_layers.on_device(getattr(self, step.attrs[0]), branches), []
                else:
                    x = torch_layers.on_device(getattr(self, step.attrs[0]), x)
            return x

    LiveNetwork.__name__ = LiveNetwork.__qualname__ = python_name(network.name)
    return LiveNetwork()


# ---------------------------------------------------------------- code generation
def _render_dict(d: dict[str, Any]) -> str:
    items = ", ".join(f"{render(k)}: {_render_value(v)}" for k, v in d.items())
    return "{" + items + "}"


def _render_value(v: Any) -> str:
    if isinstance(v, dict):
        return _render_dict(v)
    return render(v)


def generate(network: Network, report: ShapeReport) -> str:
    p = plan(network, report)
    cls = python_name(network.name)
    used: set[str] = {"place", "on_device"} if any(m.device for m in p.modules) else set()
    for m in p.modules:
        used_names(m.ctor, used)
    args = [f"in_{n}" for n in p.input_names]
    init = [f"        self.{m.attr} = {_placed(m)}" for m in p.modules]
    body: list[str] = []
    branch_vars: list[str] = []
    devices = {m.attr: m.device for m in p.modules}
    for step in p.steps:
        if step.kind == "branch":
            var = f"branch_{len(branch_vars)}"
            body.append(f"        {var} = {args[step.input_index]}")
            body += [f"        {var} = {_call(a, var, devices)}" for a in step.attrs]
            branch_vars.append(var)
        elif step.kind == "merge":
            body.append(
                f"        x = {_call(step.attrs[0], '[' + ', '.join(branch_vars) + ']', devices)}"
            )
            branch_vars = []
        else:
            body.append(f"        x = {_call(step.attrs[0], 'x', devices)}")
    first = [f"        x = {args[0]}"] if p.steps and p.steps[0].kind != "branch" else []
    s = settings(network)
    inputs = tuple((i.name, i.shape) for i in network.inputs)
    return "\n".join(
        [
            f'"""PyTorch model for the Neural DSL network {network.name!r}.',
            "",
            "Generated by neural_dsl from the network's IR. Inputs are channels-last, batch first:",
            *[f"    {n}: {render(sh)}" for n, sh in inputs],
            "Call build_model() for an untrained model; LOSS, OPTIMIZER and TRAINING carry the",
            "program's settings, and build_optimizer / build_scheduler / loss_fn put them to use.",
            '"""',
            "",
            "from __future__ import annotations",
            "",
            "import math",
            "import warnings",
            "from typing import Any",
            "",
            "import torch",
            "import torch.nn.functional as F",
            "from torch import nn",
            "",
            "# ---- layer helpers (neural_dsl.runtime.torch_layers) ----",
            "",
            helper_source("torch_layers.py", used),
            "",
            "# ---- training helpers (neural_dsl.runtime.torch_training) ----",
            "",
            helper_source("torch_training.py", set(_TRAINING_API)),
            "",
            "# ---- the network ----",
            "",
            f"INPUTS = {render(inputs)}",
            f"LOSS = {render(s['loss'])}",
            f"OPTIMIZER = {_render_dict(s['optimizer'])}",
            f"METRICS = {render(s['metrics'])}",
            f"TRAINING = {_render_dict(s['training'])}",
            f"DEVICE = {render(s['device'])}",
            "",
            "",
            f"class {cls}(nn.Module):",
            "    def __init__(self) -> None:",
            "        super().__init__()",
            *init,
            "",
            f"    def forward(self, {', '.join(args)}) -> torch.Tensor:",
            *first,
            *body,
            "        return x",
            "",
            "",
            "def build_model() -> nn.Module:",
            f"    return {cls}()",
            "",
            "",
            "def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:",
            "    return make_optimizer(model.parameters(), OPTIMIZER)",
            "",
            "",
            "def build_scheduler(optimizer: torch.optim.Optimizer) -> Any:",
            "    return make_scheduler(optimizer, OPTIMIZER)",
            "",
            "",
            "def loss_fn(y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:",
            "    return keras_loss(LOSS)(y_pred, y_true)"
            if s["loss"]
            else "    raise ValueError('the program declares no loss')",
            "",
        ]
    )


_TRAINING_API = ("keras_loss", "make_optimizer", "make_scheduler", "train_step")


def _placed(m: Module) -> str:
    text = render(m.ctor)
    return f"place({text}, {m.device!r})" if m.device else text


def _call(attr: str, var: str, devices: dict[str, str | None]) -> str:
    if devices.get(attr):
        return f"on_device(self.{attr}, {var})"
    return f"self.{attr}({var})"
