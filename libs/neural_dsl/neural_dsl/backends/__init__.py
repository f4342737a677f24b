"""Compiling a network: to PyTorch or TensorFlow/Keras source, or to an ONNX model.

    result = compile_network(network, "onnx", hparams={"layers.dense_1.units": 128})

Every backend reads the IR (never text). An unsupported layer is a diagnostic naming the
layer, its line and the backend; the support matrix is computed from the lowering tables.
Frameworks are imported only here, and only by the backend that needs them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import catalog
from ..diagnostics import Diagnostic, DSLError, Severity
from ..hparams import resolve
from ..ir import Network
from ..limits import Limits
from ..shapes import ShapeReport, propagate
from . import keras_backend, torch_backend
from .common import first_layer, unsupported

BACKENDS = ("pytorch", "tensorflow", "onnx")
ONNX_OPSET = 18
# torch's exporter keeps global state (and the export below swaps process-wide warning filters,
# stdout and a logger's level): two exports at once in one process usually both fail.
_EXPORT = threading.Lock()

# Layers the PyTorch lowering handles but the ONNX exporter cannot express (none so far:
# the set is kept so the matrix stays honest if one is found).
ONNX_EXCLUDED: dict[str, str] = {}


def supports(backend: str, layer_type: str) -> bool:
    if backend == "pytorch":
        return layer_type in torch_backend.LOWER
    if backend == "tensorflow":
        return layer_type in keras_backend.LOWER
    return layer_type in torch_backend.LOWER and layer_type not in ONNX_EXCLUDED


def support_matrix() -> dict[str, dict[str, bool]]:
    """{layer type: {backend: supported}} for every layer the language knows."""
    return {name: {b: supports(b, name) for b in BACKENDS} for name in catalog.LAYERS}


@dataclass(frozen=True)
class Compiled:
    backend: str
    network: Network  # with every HPO value fixed
    shapes: ShapeReport
    source: str | None = None  # pytorch / tensorflow
    lowered: Any = None  # onnx: an onnx_backend.Lowering (write() streams it to a file)
    warnings: list[str] = field(default_factory=list)

    @functools.cached_property
    def onnx(self) -> bytes | None:
        """The ONNX model's bytes (serialized on first use: a caller writing a file streams
        `lowered` there instead, without a copy of the weights)."""
        return None if self.lowered is None else self.lowered.serialize()


def prepare(
    network: Network,
    backend: str,
    hparams: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> tuple[Network, ShapeReport]:
    """Fix HPO values, propagate shapes, and check every layer is supported by `backend`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    problems: list[Diagnostic] = []
    for layer in network.walk():
        if layer.type != catalog.BRANCH and not supports(backend, layer.type):
            why = ONNX_EXCLUDED.get(layer.type, "") if backend == "onnx" else ""
            problems += unsupported(layer, backend, why).diagnostics
    if problems:
        raise DSLError(problems)
    if network.hpo_params() or hparams:
        network, out = resolve(network, hparams or {})
        out.raise_if_errors()
    report, out = propagate(network, limits)
    out.raise_if_errors()
    assert report is not None
    return network, report


def compile_network(
    network: Network,
    backend: str,
    hparams: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> Compiled:
    network, report = prepare(network, backend, hparams, limits)
    notes = [
        f"layer {la.name} asks for device {la.device!r}: placed there when it exists, "
        "otherwise it stays on the CPU with a warning"
        for la in network.walk()
        if la.device
    ]
    if backend == "pytorch":
        return Compiled(
            backend, network, report, torch_backend.generate(network, report), None, notes
        )
    if backend == "tensorflow":
        return Compiled(
            backend, network, report, keras_backend.generate(network, report), None, notes
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lowered = lower_onnx(network, report)
    return Compiled(
        backend,
        network,
        report,
        None,
        lowered,
        notes + [str(w.message) for w in caught if "device" in str(w.message)],
    )


def build_torch(network: Network, hparams: Mapping[str, Any] | None = None) -> Any:
    """IR -> an untrained torch.nn.Module (channels-last inputs, as the DSL declares them)."""
    network, report = prepare(network, "pytorch", hparams)
    return torch_backend.build_live(network, report)


def build_keras(
    network: Network, hparams: Mapping[str, Any] | None = None, compile_model: bool = True
) -> Any:
    """IR -> an untrained Keras model, compiled with the program's loss and optimizer."""
    network, report = prepare(network, "tensorflow", hparams)
    return keras_backend.build_live(network, report, compile_model)


def example_inputs(network: Network, batch: int = 2, seed: int = 0) -> list[Any]:
    """Random inputs of the declared shapes (token ids for inputs that feed an Embedding);
    a dimension written as None gets 8."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for inp in network.inputs:
        shape = (batch, *(8 if d is None else d for d in inp.sample_shape))
        first = first_layer(network, inp.name)
        if first is not None and first.type == "Embedding":
            out.append(rng.integers(0, first.get("input_dim"), size=shape).astype("int64"))
        else:
            out.append(rng.standard_normal(shape).astype("float32"))
    return out


def lower_onnx(
    network: Network, report: ShapeReport, weights: Mapping[str, Any] | None = None
) -> Any:
    """The network lowered straight from the IR (onnx_backend: no torch import, no tracing,
    thread-safe) and checked with onnx.checker (full_check): an `onnx_backend.Lowering`,
    whose `write` streams the model to a file and `serialize` returns its bytes. `weights`
    is a torch state_dict as numpy arrays (`onnx_backend.torch_state_dict` of a live model,
    or `keras_weights.state_dict_from_keras`); fresh weights without it."""
    from . import onnx_backend

    lowered = onnx_backend.build(network, report, weights, opset=ONNX_OPSET)
    lowered.check()
    return lowered


def export_onnx(network: Network, report: ShapeReport, model: Any = None) -> bytes:
    """The ONNX model's bytes (see lower_onnx), with fresh weights or those of `model`, a
    live torch.nn.Module of the same network (e.g. a trained one)."""
    from . import onnx_backend

    weights = onnx_backend.torch_state_dict(model) if model is not None else None
    return lower_onnx(network, report, weights).serialize()


def export_onnx_torch(network: Network, report: ShapeReport, model: Any = None) -> bytes:
    """The same through PyTorch's dynamo exporter: the cross-check the tests compare the
    direct lowering with, never the product path. Exports in one process run one at a time."""
    with _EXPORT:
        return _export_onnx(network, report, model)


def _export_onnx(network: Network, report: ShapeReport, model: Any) -> bytes:
    import onnx
    import torch

    model = (model or torch_backend.build_live(network, report)).eval()
    args = tuple(torch.from_numpy(a) for a in example_inputs(network))
    names = [i.name for i in network.inputs]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the exporter logs every torchvision op it skips
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(_flat_weights|axis name).*")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=ONNX_OPSET,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=(tuple({0: batch} for _ in names),),  # forward(*inputs)
            verbose=False,
        )
    quiet.setLevel(level)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    buf = io.BytesIO()
    onnx.save_model(proto, buf)
    return buf.getvalue()


__all__ = [
    "BACKENDS",
    "Compiled",
    "DSLError",
    "Severity",
    "build_keras",
    "build_torch",
    "compile_network",
    "example_inputs",
    "export_onnx",
    "export_onnx_torch",
    "lower_onnx",
    "support_matrix",
    "supports",
]
