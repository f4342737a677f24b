"""The served model: an onnxruntime session and what the protocol says about it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .tensors import ORT_TYPES

log = logging.getLogger("neural.replica")

DYNAMIC = -1  # a dimension the model leaves free, as OIP metadata writes it


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # DYNAMIC where free

    def fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (DYNAMIC, got) for want, got in zip(self.shape, shape, strict=True)
        )


class ModelError(Exception):
    """The file is not a model this replica can serve (the loader's reason)."""


class ModelRunError(Exception):
    """onnxruntime refused the inputs while running (e.g. shapes the graph cannot combine)."""


def _spec(arg: ort.NodeArg) -> TensorSpec | None:
    datatype = ORT_TYPES.get(arg.type)
    if datatype is None or arg.shape is None:
        return None
    shape = tuple(d if isinstance(d, int) and d >= 0 else DYNAMIC for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


class Model:
    def __init__(self, path: Path | str, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's loader errors have no common base class
            raise ModelError(f"onnxruntime cannot load {path}: {exc}") from None
        self.inputs: list[TensorSpec] = []
        for arg in self.session.get_inputs():
            spec = _spec(arg)
            if spec is None:
                raise ModelError(f"input {arg.name!r} has type {arg.type}, not an OIP tensor type")
            self.inputs.append(spec)
        self.outputs: list[TensorSpec] = []
        for arg in self.session.get_outputs():
            spec = _spec(arg)
            if spec is None:
                # e.g. a classifier's seq(map) probabilities: served models answer tensors.
                log.warning("output %s (%s) is not an OIP tensor: not served", arg.name, arg.type)
                continue
            self.outputs.append(spec)
        if not self.outputs:
            raise ModelError(f"{path}: no output is a tensor the protocol can carry")
        self.input_by_name = {s.name: s for s in self.inputs}
        self.output_by_name = {s.name: s for s in self.outputs}
        self.output_names = [s.name for s in self.outputs]
        # Requests merge along axis 0 only when every input and output leaves it free.
        self.batchable = all(
            s.shape and s.shape[0] == DYNAMIC for s in (*self.inputs, *self.outputs)
        )

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The requested outputs, in order (blocking: call it off the event loop)."""
        try:
            return self.session.run(outputs, feeds)
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail,
            ort.capi.onnxruntime_pybind11_state.RuntimeException,
        ) as exc:
            raise ModelRunError(str(exc)) from None


__all__ = ["DYNAMIC", "Model", "ModelError", "ModelRunError", "TensorSpec"]
