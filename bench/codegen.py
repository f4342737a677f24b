"""Code generation cost over the corpus, next to the parse cost of the same files.

For every corpus program that checks: parse + validate + shapes (the baseline), PyTorch and
TensorFlow code generation, each as a median over N rounds, and ONNX: the product path
(`compile_network(..., "onnx")`, the direct IR -> ONNX lowering, checked and serialised) next
to the torch dynamo export it replaced (`export_onnx_torch`, the same checks, fewer rounds)
and torch's older TorchScript exporter (`torch.onnx.export(dynamo=False)`, given the easier
plain check, since strict shape inference rejects most of its graphs; a program it cannot
export is shown as "-").
Prints per-backend medians and the ratio codegen / parse, all measured in this run.

    .venv/bin/python bench/codegen.py [--rounds N] [--onnx-rounds M]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neural_dsl import DSLError, check
from neural_dsl.backends import compile_network, export_onnx_torch, prepare
from neural_dsl.hparams import first_values
from neural_dsl.ir import Network

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn: object, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def dynamo_onnx(network: Network, hparams: Mapping[str, Any]) -> bytes:
    """The export ONNX compiles used before: a PyTorch model traced by torch's dynamo
    exporter, checked (full) and serialised."""
    fixed, report = prepare(network, "onnx", hparams)
    return export_onnx_torch(fixed, report)


def torchscript_onnx(network: Network, hparams: Mapping[str, Any]) -> bytes:
    """torch's TorchScript exporter (traces the model; deprecated in torch 2.9 and later but
    the fastest torch path), with a dynamic batch, checked and serialised."""
    import io
    import warnings

    import onnx
    import torch
    from neural_dsl.backends import ONNX_OPSET, example_inputs, torch_backend

    fixed, report = prepare(network, "onnx", hparams)
    model = torch_backend.build_live(fixed, report).eval()
    args = tuple(torch.from_numpy(a) for a in example_inputs(fixed))
    names = [i.name for i in fixed.inputs]
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            out,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=names,
            output_names=["output"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "output"]},
        )
    proto = onnx.load_from_string(out.getvalue())
    # the plain check: strict shape inference (full_check) rejects most of its graphs
    # ("Input 0 expected to have type but instead is null")
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def maybe_time(fn: object, rounds: int) -> float:
    """The median time, or NaN when this exporter cannot export the program."""
    try:
        return median_time(fn, rounds)
    except Exception:
        return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--onnx-rounds", type=int, default=2)
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "dsl" / "corpus")
    args = ap.parse_args()

    programs = {}
    for path in sorted((args.corpus / "examples").glob("*.neural")):
        text = path.read_text(encoding="utf-8")
        try:
            network = check(text).program.network
        except DSLError:
            continue
        programs[path.name] = (text, network, first_values(network))

    per: dict[str, dict[str, float]] = {
        "parse": {},
        "pytorch": {},
        "tensorflow": {},
        "onnx": {},
        "onnx-ts": {},
        "onnx-direct": {},
    }
    first = next(iter(programs.values()))
    dynamo_onnx(first[1], first[2])  # the exporter's one-off start, outside the timings
    for name, (text, network, hp) in programs.items():
        per["parse"][name] = median_time(lambda t=text: check(t), args.rounds)
        for backend in ("pytorch", "tensorflow"):
            per[backend][name] = median_time(
                lambda n=network, b=backend, h=hp: compile_network(n, b, h), args.rounds
            )
        per["onnx"][name] = median_time(lambda n=network, h=hp: dynamo_onnx(n, h), args.onnx_rounds)
        per["onnx-ts"][name] = maybe_time(
            lambda n=network, h=hp: torchscript_onnx(n, h), args.onnx_rounds
        )
        per["onnx-direct"][name] = median_time(  # .onnx: the bytes, serialised
            lambda n=network, h=hp: compile_network(n, "onnx", h).onnx, args.rounds
        )

    print(f"{len(programs)} corpus programs that check; medians per file")
    print(
        f"{'file':52s} {'parse':>9s} {'pytorch':>9s} {'tensorflow':>11s} {'onnx':>9s}"
        f" {'onnx-ts':>9s} {'onnx-direct':>12s}"
    )
    kinds = ("parse", "pytorch", "tensorflow", "onnx", "onnx-ts", "onnx-direct")
    for name in programs:
        row = [per[k][name] * 1e3 for k in kinds]
        ts = "-" if math.isnan(row[4]) else f"{row[4]:.0f}m"
        print(
            f"{name[:52]:52s} {row[0]:8.2f}m {row[1]:8.2f}m {row[2]:10.2f}m {row[3]:8.0f}m"
            f" {ts:>9s} {row[5]:11.2f}m"
        )
    base = statistics.median(per["parse"].values())
    for backend in kinds[1:]:
        done = [n for n in programs if not math.isnan(per[backend][n])]
        med = statistics.median(per[backend][n] for n in done)
        ratio = statistics.median(per[backend][n] / per["parse"][n] for n in done)
        print(
            f"{backend:10s} median {med * 1e3:9.2f} ms per file; codegen/parse ratio {ratio:7.1f}x"
            f" (parse median {base * 1e3:.2f} ms)"
        )
    speedup = statistics.median(per["onnx"][n] / per["onnx-direct"][n] for n in programs)
    direct = statistics.median(per["onnx-direct"].values())
    print(
        f"onnx (dynamo export) / onnx-direct: median ratio {speedup:.1f}x "
        f"(targets: >= 25x, p50 {direct * 1e3:.1f} ms <= 100 ms per file)"
    )
    traced = [n for n in programs if not math.isnan(per["onnx-ts"][n])]
    ts_speedup = statistics.median(per["onnx-ts"][n] / per["onnx-direct"][n] for n in traced)
    print(
        f"onnx-ts (TorchScript export) / onnx-direct: median ratio {ts_speedup:.1f}x over the "
        f"{len(traced)} of {len(programs)} programs it exports"
    )


if __name__ == "__main__":
    sys.exit(main())
