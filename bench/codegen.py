"""Code generation cost over the corpus, next to the parse cost of the same files.

For every corpus program that checks: parse + validate + shapes (the baseline), PyTorch and
TensorFlow code generation, each as a median over N rounds, and ONNX: the product path
(`compile_network(..., "onnx")`, the direct IR -> ONNX lowering, checked and serialised) next
to the torch dynamo export it replaced (`export_onnx_torch`, the same checks, fewer rounds).
Prints per-backend medians and the ratio codegen / parse, all measured in this run.

    .venv/bin/python bench/codegen.py [--rounds N] [--onnx-rounds M]
"""

from __future__ import annotations

import argparse
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
        per["onnx-direct"][name] = median_time(
            lambda n=network, h=hp: compile_network(n, "onnx", h), args.rounds
        )

    print(f"{len(programs)} corpus programs that check; medians per file")
    print(
        f"{'file':52s} {'parse':>9s} {'pytorch':>9s} {'tensorflow':>11s} {'onnx':>9s}"
        f" {'onnx-direct':>12s}"
    )
    for name in programs:
        row = [
            per[k][name] * 1e3 for k in ("parse", "pytorch", "tensorflow", "onnx", "onnx-direct")
        ]
        print(
            f"{name[:52]:52s} {row[0]:8.2f}m {row[1]:8.2f}m {row[2]:10.2f}m {row[3]:8.0f}m"
            f" {row[4]:11.2f}m"
        )
    base = statistics.median(per["parse"].values())
    for backend in ("pytorch", "tensorflow", "onnx", "onnx-direct"):
        med = statistics.median(per[backend].values())
        ratio = statistics.median(per[backend][n] / per["parse"][n] for n in programs)
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


if __name__ == "__main__":
    sys.exit(main())
