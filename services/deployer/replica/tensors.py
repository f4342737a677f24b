"""Open Inference Protocol tensors <-> numpy arrays.

A tensor travels either in its typed `contents` field for its datatype or as
`raw_input_contents`/`raw_output_contents`: the elements flattened row-major, little-endian,
no padding; a BYTES element raw is a 4-byte little-endian length and then its bytes. FP16 has
no typed field, so it travels raw only. BYTES become onnxruntime's string tensors, which hold
text: their elements must be UTF-8 (onnxruntime would turn a bytes object into its repr).
BF16 is left out: neither numpy nor onnxruntime's Python API takes it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from inference import grpc_predict_v2_pb2 as pb


@dataclass(frozen=True)
class Datatype:
    name: str  # the OIP name
    dtype: np.dtype
    field: str  # the typed contents field; "" where the datatype has none (FP16)


_TYPES = [
    Datatype("BOOL", np.dtype(np.bool_), "bool_contents"),
    Datatype("INT8", np.dtype("i1"), "int_contents"),
    Datatype("INT16", np.dtype("<i2"), "int_contents"),
    Datatype("INT32", np.dtype("<i4"), "int_contents"),
    Datatype("INT64", np.dtype("<i8"), "int64_contents"),
    Datatype("UINT8", np.dtype("u1"), "uint_contents"),
    Datatype("UINT16", np.dtype("<u2"), "uint_contents"),
    Datatype("UINT32", np.dtype("<u4"), "uint_contents"),
    Datatype("UINT64", np.dtype("<u8"), "uint64_contents"),
    Datatype("FP16", np.dtype("<f2"), ""),
    Datatype("FP32", np.dtype("<f4"), "fp32_contents"),
    Datatype("FP64", np.dtype("<f8"), "fp64_contents"),
    Datatype("BYTES", np.dtype(object), "bytes_contents"),
]
DATATYPES = {t.name: t for t in _TYPES}
CONTENT_FIELDS = sorted({t.field for t in _TYPES if t.field})

# onnxruntime's NodeArg.type -> OIP datatype
ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


class TensorError(ValueError):
    """The tensor's data does not match its datatype and shape (a caller's mistake)."""


def count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _raw_bytes_elements(raw: bytes, n: int) -> list[bytes]:
    out = []
    at = 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise TensorError("raw BYTES content ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise TensorError("raw BYTES content ends inside an element")
        out.append(raw[at : at + size])
        at += size
    if len(out) != n:
        raise TensorError(f"raw BYTES content holds {len(out)} elements, the shape needs {n}")
    return out


def _texts(elements: Any, shape: tuple[int, ...]) -> np.ndarray:
    try:
        texts = [bytes(e).decode() for e in elements]
    except UnicodeDecodeError as exc:
        raise TensorError(f"a BYTES element is not UTF-8 text ({exc.reason})") from None
    return np.array(texts, dtype=object).reshape(shape)


def from_raw(raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array of a raw_input_contents entry (a read-only view of the bytes, no copy)."""
    t = DATATYPES[datatype]
    n = count(shape)
    if datatype == "BYTES":
        return _texts(_raw_bytes_elements(raw, n), shape)
    if len(raw) != n * t.dtype.itemsize:
        raise TensorError(
            f"raw content has {len(raw)} bytes; shape {list(shape)} of {datatype} needs "
            f"{n * t.dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=t.dtype).reshape(shape)


def from_contents(contents: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array of a tensor's typed `contents`."""
    t = DATATYPES[datatype]
    if not t.field:
        raise TensorError(f"{datatype} has no typed contents field: send it in raw_input_contents")
    for field in CONTENT_FIELDS:
        if field != t.field and len(getattr(contents, field)):
            raise TensorError(f"a {datatype} tensor's values go in contents.{t.field}, not {field}")
    values = getattr(contents, t.field)
    n = count(shape)
    if len(values) != n:
        raise TensorError(
            f"contents.{t.field} has {len(values)} values; shape {list(shape)} needs {n}"
        )
    if datatype == "BYTES":
        return _texts(values, shape)
    if t.dtype.kind in "iu" and t.dtype.itemsize < 8:
        # Range-checked: an INT8 tensor's int_contents may hold 300, which must not wrap.
        wide = np.array(values, dtype=np.int64)
        info = np.iinfo(t.dtype)
        if n and (wide.min() < info.min or wide.max() > info.max):
            raise TensorError(f"a value is out of {datatype}'s range [{info.min}, {info.max}]")
        return wide.astype(t.dtype).reshape(shape)
    return np.array(values, dtype=t.dtype).reshape(shape)


def _bytes_item(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def to_raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for item in array.ravel():
            data = _bytes_item(item)
            parts.append(struct.pack("<I", len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype].dtype).tobytes()


def fill_contents(tensor: pb.ModelInferResponse.InferOutputTensor, array: np.ndarray) -> None:
    """Set the output tensor's typed contents from `array` (its datatype is set already)."""
    t = DATATYPES[tensor.datatype]
    flat = array.ravel()
    if tensor.datatype == "BYTES":
        tensor.contents.bytes_contents.extend(_bytes_item(v) for v in flat)
    else:
        getattr(tensor.contents, t.field).extend(flat.tolist())


def has_typed_field(datatype: str) -> bool:
    return bool(DATATYPES[datatype].field)


__all__ = [
    "DATATYPES",
    "ORT_TYPES",
    "TensorError",
    "count",
    "fill_contents",
    "from_contents",
    "from_raw",
    "has_typed_field",
    "to_raw",
]
