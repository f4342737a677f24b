"""Run in a fresh interpreter by test_corpus_backends: import each generated artifact, build
it, run a forward pass on the saved inputs, and print the output shapes as JSON.

It imports nothing from neural_dsl: generated code must stand on its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def run(entry: dict) -> list[int]:
    data = np.load(entry["inputs"])
    inputs = [data[f"arr_{i}"] for i in range(len(data.files))]
    if entry["backend"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(entry["artifact"], providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return list(session.run(None, dict(zip(names, inputs, strict=True)))[0].shape)
    spec = importlib.util.spec_from_file_location(entry["module"], entry["artifact"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model()
    if entry["backend"] == "pytorch":
        import torch

        with torch.no_grad():
            return list(model.eval()(*[torch.from_numpy(x) for x in inputs]).shape)
    return list(np.asarray(model(inputs, training=False)).shape)


def main() -> None:
    entries = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    shapes = {e["module"]: run(e) for e in entries}
    print(json.dumps({"shapes": shapes, "imports_neural_dsl": "neural_dsl" in sys.modules}))


if __name__ == "__main__":
    main()
