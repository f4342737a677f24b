"""OIP tensors <-> numpy and a ModelInferRequest checked against a model, in process."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from inference import grpc_predict_v2_pb2 as pb
from service_kit.errors import InvalidArgument

from services.deployer.replica import tensors
from services.deployer.replica.model import DYNAMIC, Model, ModelError
from services.deployer.replica.protocol import decode, encode

Tensor = pb.ModelInferRequest.InferInputTensor

SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], np.int8),
    "INT16": np.array([[-32768, 1, 32767]], np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], np.int64),
    "UINT8": np.array([[0, 1, 255]], np.uint8),
    "UINT16": np.array([[0, 1, 65535]], np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], np.uint64),
    "FP16": np.array([[0.5, -1.25, np.inf]], np.float16),
    "FP32": np.array([[0.1, np.nan, -3e38]], np.float32),
    "FP64": np.array([[0.1, -np.inf, 1e300]], np.float64),
    "BYTES": np.array([[b"", b"a\x00b", "é".encode()]], dtype=object),
}


def as_read(array: np.ndarray, datatype: str) -> np.ndarray:
    """What decoding gives: BYTES as text, for onnxruntime's string tensors."""
    if datatype == "BYTES":
        return np.array([b.decode() for b in array.ravel()], dtype=object).reshape(array.shape)
    return array


@pytest.mark.parametrize("datatype", sorted(SAMPLES))
def test_raw_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    back = tensors.from_raw(tensors.to_raw(array, datatype), datatype, array.shape)
    assert back.shape == array.shape and back.dtype == tensors.DATATYPES[datatype].dtype
    assert np.array_equal(back, as_read(array, datatype), equal_nan=datatype.startswith("FP"))


@pytest.mark.parametrize("datatype", sorted(d for d in SAMPLES if tensors.has_typed_field(d)))
def test_typed_round_trip(datatype: str) -> None:
    array = SAMPLES[datatype]
    out = pb.ModelInferResponse.InferOutputTensor(datatype=datatype, shape=array.shape)
    tensors.fill_contents(out, array)
    back = tensors.from_contents(out.contents, datatype, array.shape)
    assert back.dtype == tensors.DATATYPES[datatype].dtype
    assert np.array_equal(back, as_read(array, datatype), equal_nan=datatype.startswith("FP"))


def test_raw_bytes_are_little_endian_and_length_prefixed() -> None:
    assert tensors.to_raw(np.array([1], np.int32), "INT32") == b"\x01\x00\x00\x00"
    assert tensors.to_raw(np.array([b"ab"], object), "BYTES") == b"\x02\x00\x00\x00ab"


@pytest.mark.parametrize(
    ("raw", "datatype", "shape", "message"),
    [
        (b"\x00" * 7, "FP32", (2,), "7 bytes; shape [2] of FP32 needs 8"),
        (b"\x05\x00\x00\x00ab", "BYTES", (1,), "ends inside an element"),
        (b"\x01\x00", "BYTES", (1,), "4-byte length"),
        (b"\x01\x00\x00\x00a", "BYTES", (2,), "holds 1 elements, the shape needs 2"),
        (b"\x01\x00\x00\x00\xff", "BYTES", (1,), "a BYTES element is not UTF-8 text"),
    ],
)
def test_bad_raw_contents(raw: bytes, datatype: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(tensors.TensorError, match=re.escape(message)):
        tensors.from_raw(raw, datatype, shape)


def test_bad_typed_contents() -> None:
    contents = pb.InferTensorContents(int_contents=[1, 300])
    with pytest.raises(tensors.TensorError, match="out of INT8's range"):
        tensors.from_contents(contents, "INT8", (2,))
    with pytest.raises(tensors.TensorError, match=r"values go in contents\.fp32_contents"):
        tensors.from_contents(contents, "FP32", (2,))
    with pytest.raises(tensors.TensorError, match="has 2 values; shape \\[3\\] needs 3"):
        tensors.from_contents(contents, "INT32", (3,))
    with pytest.raises(tensors.TensorError, match="FP16 has no typed contents"):
        tensors.from_contents(contents, "FP16", (2,))


# ------------------------------------------------------------------ requests and the model
@pytest.fixture(scope="module")
def multi(built_models: dict[str, Path]) -> Model:
    return Model(built_models["multi"])


def request(
    a: np.ndarray, b: np.ndarray, raw: bool = True, **fields: object
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", **fields)
    for name, datatype, array in (("a", "FP32", a), ("b", "INT64", b)):
        tensor = req.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            req.raw_input_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, tensors.DATATYPES[datatype].field).extend(
                array.ravel().tolist()
            )
    return req


A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.arange(4, dtype=np.int64).reshape(2, 2)


def test_the_model_describes_its_tensors(multi: Model) -> None:
    assert [(s.name, s.datatype, s.shape) for s in multi.inputs] == [
        ("a", "FP32", (DYNAMIC, 4)),
        ("b", "INT64", (DYNAMIC, 2)),
    ]
    assert [(s.name, s.datatype) for s in multi.outputs] == [
        ("doubled", "FP32"),
        ("squared", "INT64"),
        ("half", "FP16"),
    ]
    assert multi.batchable


def test_a_model_file_that_does_not_load_says_why(built_models: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        Model(built_models["broken"])


@pytest.mark.parametrize("raw", [True, False])
def test_decode_run_encode(multi: Model, raw: bool) -> None:
    req = request(A, B, raw=raw, id="r-1")
    req.outputs.add(name="squared")
    req.outputs.add(name="doubled")
    decoded = decode(req, multi, max_batch_size=4)
    assert decoded.outputs == ["squared", "doubled"] and decoded.raw is raw
    arrays = multi.run(decoded.feeds, decoded.outputs)
    response = encode(req, multi, "v1", decoded.outputs, arrays, decoded.raw)
    assert (response.id, response.model_name, response.model_version) == ("r-1", "m", "v1")
    assert [o.name for o in response.outputs] == ["squared", "doubled"]
    if raw:
        squared = np.frombuffer(response.raw_output_contents[0], np.int64).reshape(2, 2)
    else:
        assert not response.raw_output_contents
        squared = np.array(response.outputs[0].contents.int64_contents).reshape(2, 2)
    assert np.array_equal(squared, B * B)


def test_an_fp16_output_makes_the_whole_answer_raw(multi: Model) -> None:
    req = request(A, B, raw=False)
    decoded = decode(req, multi, max_batch_size=4)
    response = encode(
        req, multi, "v1", decoded.outputs, multi.run(decoded.feeds, decoded.outputs), decoded.raw
    )
    assert len(response.raw_output_contents) == 3
    half = np.frombuffer(response.raw_output_contents[2], np.float16).reshape(2, 4)
    assert np.array_equal(half, A.astype(np.float16))


def bad(req: pb.ModelInferRequest, model: Model, match: str, max_batch_size: int = 4) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(match)):
        decode(req, model, max_batch_size)


def test_every_caller_mistake_names_the_tensor(multi: Model) -> None:
    req = request(A, B)
    req.inputs[0].name = "c"
    bad(req, multi, "unknown input 'c': the model's inputs are a, b")
    req = request(A, B)
    req.inputs[1].datatype = "INT32"
    bad(req, multi, "input 'b' has datatype 'INT32'; the model expects INT64")
    req = request(A, B)
    req.inputs[0].shape[1] = 5
    bad(req, multi, "input 'a' has shape [2, 5]; the model expects [-1, 4]")
    req = request(A, B)
    del req.inputs[0].shape[1]
    bad(req, multi, "input 'a' has shape [2]; the model expects [-1, 4]")
    req = request(A, B)
    req.inputs[0].shape[0] = -2
    bad(req, multi, "input 'a' has shape")
    bad(
        request(A, B),
        multi,
        "input 'a' has a batch of 2; this deployment's maximum batch size is 1",
        1,
    )
    req = request(A, B)
    req.raw_input_contents[0] = req.raw_input_contents[0][:-4]
    bad(req, multi, "input 'a': raw content has 28 bytes; shape [2, 4] of FP32 needs 32")
    req = request(A, B, raw=False)
    req.inputs[1].contents.int64_contents.append(1)
    bad(req, multi, "input 'b': contents.int64_contents has 5 values; shape [2, 2] needs 4")
    req = request(A, B)
    del req.inputs[1]
    del req.raw_input_contents[1]
    bad(req, multi, "missing input(s) b")
    req = request(A, B)
    req.raw_input_contents.pop()
    bad(req, multi, "raw_input_contents has 1 entries for 2 inputs")
    req = request(A, B)
    req.inputs[0].contents.fp32_contents.append(1.0)
    bad(req, multi, "input 'a': with raw_input_contents, no input may have `contents`")
    req = request(A, B)
    req.outputs.add(name="tripled")
    bad(req, multi, "unknown requested output 'tripled': the model's outputs are doubled, ")
    req = request(A, B)
    req.outputs.add(name="half")
    req.outputs.add(name="half")
    bad(req, multi, "requested output 'half' is asked for twice")


def test_bytes_tensors_are_text_to_the_model(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["s"], ["t"])],
        "strings",
        [onnx.helper.make_tensor_value_info("s", onnx.TensorProto.STRING, ["N"])],
        [onnx.helper.make_tensor_value_info("t", onnx.TensorProto.STRING, ["N"])],
    )
    onnx.save(onnx.helper.make_model(graph), tmp_path / "strings.onnx")
    model = Model(tmp_path / "strings.onnx")
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [("s", "BYTES", (DYNAMIC,))]
    words = [b"caf\xc3\xa9", b"", b"a\x00b"]
    for raw in (True, False):
        req = pb.ModelInferRequest(model_name="m")
        tensor = req.inputs.add(name="s", datatype="BYTES", shape=[3])
        if raw:
            req.raw_input_contents.append(tensors.to_raw(np.array(words, object), "BYTES"))
        else:
            tensor.contents.bytes_contents.extend(words)
        decoded = decode(req, model, max_batch_size=4)
        out = model.run(decoded.feeds, decoded.outputs)
        response = encode(req, model, "v1", decoded.outputs, out, decoded.raw)
        if raw:
            back = tensors.from_raw(response.raw_output_contents[0], "BYTES", (3,))
            assert list(back) == [w.decode() for w in words]
        else:
            assert list(response.outputs[0].contents.bytes_contents) == words


def test_a_fixed_batch_is_checked_as_any_dimension(built_models: dict[str, Path]) -> None:
    model = Model(built_models["fixed"])
    assert not model.batchable
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[3, 3])
    req.raw_input_contents.append(np.zeros(9, np.float32).tobytes())
    bad(req, model, "input 'x' has shape [3, 3]; the model expects [2, 3]", max_batch_size=1)
