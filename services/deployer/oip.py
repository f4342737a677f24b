"""Predict's JSON-friendly tensors to and from the Open Inference Protocol's ModelInfer.

Tensors travel as raw little-endian bytes (`raw_input_contents`), the protocol's compact form;
answers are read in either form the replica sends."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import struct_pb2
from inference import grpc_predict_v2_pb2 as oip
from neural.v1 import deployer_pb2

from .spec import bad

# OIP datatype -> NumPy dtype, for what a replica may answer
NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
# Predict's dtype names (ONNX / NumPy) -> OIP datatype
DATATYPES = {"float32": "FP32", "int64": "INT64"}
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
MAX_VALUES = 16 << 20
MAX_DIMS = 64  # NumPy's most


def _rows(values: struct_pb2.ListValue) -> np.ndarray:
    """`instances` as one array: rows of numbers of one shape, all finite."""
    data = [_plain(v, f"instances[{i}]") for i, v in enumerate(values.values)]
    if not data:
        raise bad("instances", "at least one row")
    try:
        array = np.asarray(data, dtype=np.float64)
    except ValueError:
        raise bad("instances", "rows of one shape (nested lists of numbers)") from None
    if array.dtype == object:
        raise bad("instances", "rows of one shape (nested lists of numbers)")
    return array


def _plain(value: struct_pb2.Value, path: str) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise bad(path, "a finite number")
        return value.number_value
    if kind == "bool_value":
        return float(value.bool_value)
    if kind == "list_value":
        return [_plain(v, f"{path}[{i}]") for i, v in enumerate(value.list_value.values)]
    raise bad(path, "a number or a list of numbers")


def _tensor(t: deployer_pb2.Tensor, field: str) -> np.ndarray:
    if t.dtype not in DATATYPES:
        raise bad(f"{field}.dtype", f"float32 or int64, got {t.dtype!r}")
    shape = tuple(t.shape)
    if any(d < 0 for d in shape):
        raise bad(f"{field}.shape", "dimensions must not be negative")
    if len(shape) > MAX_DIMS:
        raise bad(f"{field}.shape", f"at most {MAX_DIMS} dimensions")
    # an empty tensor's other dimensions too: NumPy refuses a shape whose product overflows
    if math.prod(d for d in shape if d) > MAX_VALUES:
        raise bad(f"{field}.shape", f"at most {MAX_VALUES} values")
    count = math.prod(shape)
    if t.dtype == "float32":
        if t.int64_data:
            raise bad(f"{field}.int64_data", "a float32 tensor's values go in float_data")
        data = np.asarray(t.float_data, dtype=np.float32)
    else:
        if t.float_data:
            raise bad(f"{field}.float_data", "an int64 tensor's values go in int64_data")
        data = np.asarray(t.int64_data, dtype=np.int64)
    if data.size != count:
        raise bad(f"{field}.shape", f"its product is {count} but {data.size} values were given")
    return data.reshape(shape)


def infer_request(
    request: deployer_pb2.PredictRequest,
    model_name: str,
    version: str,
    inputs: list[tuple[str, str]],
) -> oip.ModelInferRequest:
    """The ModelInferRequest for a PredictRequest; `inputs` are the model's (name, datatype)."""
    out = oip.ModelInferRequest(model_name=model_name, model_version=version, id=request.id)
    if request.inputs and request.HasField("instances"):
        raise bad("instances", "give either inputs or instances, not both")
    if request.HasField("instances"):
        if len(inputs) != 1:
            raise bad(
                "instances",
                f"the model has {len(inputs)} inputs ({', '.join(n for n, _ in inputs)}): "
                "send them as named `inputs`",
            )
        name, datatype = inputs[0]
        array = _rows(request.instances)
        arrays = [(name, datatype, array.astype(NUMPY.get(datatype, np.float32)))]
    elif request.inputs:
        known = dict(inputs)
        arrays = []
        for i, t in enumerate(request.inputs):
            field = f"inputs[{i}]"
            name = t.name
            if not name:
                if len(inputs) != 1:
                    raise bad(f"{field}.name", f"one of {', '.join(known)}")
                name = inputs[0][0]
            array = _tensor(t, field)
            arrays.append((name, DATATYPES[t.dtype], array))
    else:
        raise bad("inputs", "required: inputs or instances")
    total = sum(a.size for _, _, a in arrays)
    if total > MAX_VALUES:
        raise bad("inputs", f"at most {MAX_VALUES} values in all")
    for name, datatype, array in arrays:
        out.inputs.add(name=name, datatype=datatype, shape=array.shape)
        out.raw_input_contents.append(
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        )
    return out


def output_arrays(response: oip.ModelInferResponse) -> list[tuple[str, np.ndarray]]:
    out = []
    for i, t in enumerate(response.outputs):
        dtype = NUMPY.get(t.datatype)
        if dtype is None:
            raise ValueError(f"output {t.name} is {t.datatype}, which Predict cannot carry")
        if response.raw_output_contents:
            little = np.dtype(dtype).newbyteorder("<")
            array = np.frombuffer(response.raw_output_contents[i], dtype=little)
        else:
            array = np.asarray(getattr(t.contents, CONTENTS[t.datatype]), dtype=dtype)
        out.append((t.name, array.reshape(tuple(t.shape))))
    return out


def predict_response(response: oip.ModelInferResponse, rows: bool) -> deployer_pb2.PredictResponse:
    """Typed tensors (floats as float32, integers and booleans as int64), and JSON rows when
    the request sent `instances`: one output's rows as they are, several as {name: row}."""
    arrays = output_arrays(response)
    out = deployer_pb2.PredictResponse(model_version=response.model_version)
    for name, array in arrays:
        t = out.outputs.add(name=name, shape=array.shape)
        if array.dtype.kind == "f":
            t.dtype = "float32"
            t.float_data.extend(array.astype(np.float32).ravel().tolist())
        else:
            t.dtype = "int64"
            t.int64_data.extend(array.astype(np.int64).ravel().tolist())
    if rows:
        if len(arrays) == 1:
            out.predictions.extend(_listed(arrays[0][1]))
        else:
            listed = {name: _listed(array) for name, array in arrays}
            for i in range(min(len(values) for values in listed.values())):
                out.predictions.add_struct().update({n: v[i] for n, v in listed.items()})
    return out


def _listed(array: np.ndarray) -> list[Any]:
    # float32 values widened exactly to the doubles a ListValue holds
    values = array.astype(np.float64) if array.dtype.kind == "f" else array
    return values.tolist() if values.ndim else [values.item()]
