"""A ModelInferRequest checked against the model and turned into onnxruntime feeds, and the
outputs turned back into a ModelInferResponse.

Every mistake a caller can make is an InvalidArgument naming the tensor and what the model
expects, found before the model runs. NaN and infinite values are not refused here: the
model's arithmetic decides what they give (ONNX operators propagate them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from inference import grpc_predict_v2_pb2 as pb
from service_kit.errors import InvalidArgument, shown

from .model import DYNAMIC, Model
from .tensors import DATATYPES, TensorError, fill_contents, from_contents, from_raw, to_raw

MAX_DIM = 1 << 40  # a dimension past this is no tensor anyone sends


@dataclass
class Decoded:
    feeds: dict[str, np.ndarray]
    outputs: list[str]  # the requested outputs, in the order asked (all when none asked)
    raw: bool  # answer in raw_output_contents (the request used raw_input_contents)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("-1" if d == DYNAMIC else str(d) for d in shape) + "]"


def decode(request: pb.ModelInferRequest, model: Model, max_batch_size: int) -> Decoded:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one "
            "per input, in the order of `inputs`"
        )
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        spec = model.input_by_name.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"unknown input {shown(tensor.name)}: the model's inputs are "
                f"{', '.join(model.input_by_name)}"
            )
        where = f"input {tensor.name!r}"
        if tensor.name in feeds:
            raise InvalidArgument(f"{where} is given twice")
        if tensor.datatype != spec.datatype:
            raise InvalidArgument(
                f"{where} has datatype {shown(tensor.datatype)}; the model expects {spec.datatype}"
            )
        shape = tuple(tensor.shape)
        if not spec.fits(shape) or any(d < 0 or d > MAX_DIM for d in shape):
            raise InvalidArgument(
                f"{where} has shape {list(shape)}; the model expects {_shape_text(spec.shape)} "
                "(-1: any size)"
            )
        if spec.shape and spec.shape[0] == DYNAMIC and shape[0] > max_batch_size:
            raise InvalidArgument(
                f"{where} has a batch of {shape[0]}; this deployment's maximum batch size is "
                f"{max_batch_size}"
            )
        try:
            if raw:
                if tensor.HasField("contents"):
                    raise TensorError("with raw_input_contents, no input may have `contents`")
                feeds[tensor.name] = from_raw(raw[i], spec.datatype, shape)
            else:
                feeds[tensor.name] = from_contents(tensor.contents, spec.datatype, shape)
        except TensorError as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
    missing = [name for name in model.input_by_name if name not in feeds]
    if missing:
        raise InvalidArgument(f"missing input(s) {', '.join(missing)}: the model needs them all")
    outputs = []
    for wanted in request.outputs:
        if wanted.name not in model.output_by_name:
            raise InvalidArgument(
                f"unknown requested output {shown(wanted.name)}: the model's outputs are "
                f"{', '.join(model.output_names)}"
            )
        if wanted.name in outputs:
            raise InvalidArgument(f"requested output {wanted.name!r} is asked for twice")
        if "classification" in wanted.parameters:
            raise InvalidArgument(
                f"requested output {wanted.name!r}: the classification extension is not served"
            )
        outputs.append(wanted.name)
    return Decoded(feeds, outputs or list(model.output_names), bool(raw))


def encode(
    request: pb.ModelInferRequest,
    model: Model,
    version: str,
    names: list[str],
    arrays: list[np.ndarray],
    raw: bool,
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=version, id=request.id
    )
    datatypes = [model.output_by_name[n].datatype for n in names]
    # FP16 has no typed field, and raw must then carry every output (the protocol's rule).
    raw = raw or any(not DATATYPES[d].field for d in datatypes)
    for name, datatype, array in zip(names, datatypes, arrays, strict=True):
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(to_raw(array, datatype))
        else:
            fill_contents(tensor, array)
    return response


__all__ = ["Decoded", "decode", "encode"]
