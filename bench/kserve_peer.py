"""KServe's Python model server with an onnxruntime model: bench/predict.py's peer.

The model class a KServe user would write for an ONNX file: the same session settings as the
replica (one intra-op thread, sequential), `predict` runs the session on the request's inputs
and answers raw outputs when the request came with raw inputs (the protocol's rule for gRPC).
Serves the Open Inference Protocol V2 over gRPC (and REST) until SIGTERM. Runs from .venv-bench
(kserve needs protobuf < 7; `make bench-deps`):

    .venv-bench/bin/python bench/kserve_peer.py --model FILE [--model-name NAME]
        --grpc-port N --http-port N
"""

from __future__ import annotations

import argparse
import sys

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
from kserve.utils.numpy_codec import from_np_dtype


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.load()

    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return self.ready

    def predict(
        self, payload: InferRequest, headers: dict[str, str] | None = None
    ) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        arrays = self.session.run(self.output_names, feeds)
        outputs = []
        for name, array in zip(self.output_names, arrays, strict=True):
            out = InferOutput(
                name=name, shape=list(array.shape), datatype=from_np_dtype(array.dtype)
            )
            # raw bytes when the request sent raw inputs (passing `data=` to InferOutput
            # instead trips kserve 0.21's to_grpc on a numpy array's truth value)
            out.set_data_from_numpy(array, binary_data=payload.use_binary_outputs)
            outputs.append(out)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-name", default="bench")
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    args = ap.parse_args()
    # kserve reads its own flags from sys.argv when imported: ours are not among them.
    # One worker process, as the replica is one; no per-request latency log line (the
    # replica logs no line per call either; bench/predict.py sets KSERVE_LOGLEVEL=WARNING,
    # which also quiets the per-call INFO line of kserve's gRPC interceptor).
    ModelServer(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        workers=1,
        enable_latency_logging=False,
    ).start([OnnxModel(args.model_name, args.model)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
