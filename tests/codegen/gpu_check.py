"""On a machine with CUDA: every test program's PyTorch model gives on the GPU what it gives
on the CPU (TF32 off), and `@ "cuda:0"` places layers there. Prints one JSON line.

    python tests/codegen/gpu_check.py
"""

from __future__ import annotations

import json
import warnings

import torch
from neural_dsl import check, parse
from neural_dsl.backends import build_torch, example_inputs

from tests.codegen.programs import PROGRAMS

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def main() -> None:
    report: dict[str, object] = {"cuda": torch.cuda.is_available()}
    diffs = {}
    for name, text in sorted(PROGRAMS.items()):
        network = check(text).program.network
        torch.manual_seed(0)
        model = build_torch(network).eval()
        xs = [torch.from_numpy(x) for x in example_inputs(network, batch=4)]
        with torch.no_grad():
            cpu = model(*xs)
            gpu = model.to("cuda")(*[x.to("cuda") for x in xs]).cpu()
        diffs[name] = float((cpu - gpu).abs().max())
    report["max_abs_diff_gpu_vs_cpu"] = diffs
    placed = parse(
        'network P {\n input: (16)\n layers:\n  Dense(8) @ "cuda:0"\n  Dense(4)\n}'
    ).network
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_torch(placed)
    out = model(torch.ones(2, 16))
    report["placement"] = {
        "dense_1": str(next(model.dense_1.parameters()).device),
        "dense_2": str(next(model.dense_2.parameters()).device),
        "output": str(out.device),
        "warnings": [str(w.message) for w in caught],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
