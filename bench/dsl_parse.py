"""Parse + validate + shape-check the whole DSL corpus, N rounds.

Prints files per second, the p50 per file, the one-off cost of building the parser (in the
same run, as a ratio to the p50 per file), and the time to a ready parser in a new process:
ours (the parser `make setup` saves, see neural_dsl.syntax) against building it there, and
against the 20 ms target. When the original Neural DSL
(`make bench-deps` installs neural-dsl 0.2.9 into .venv-bench) is present, the same
files are timed through its parser in the same run and the ratio is printed.

    .venv/bin/python bench/dsl_parse.py [--rounds N] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from neural_dsl import DSLError, check
from neural_dsl.syntax import build_parser, parser_cache_path

ROOT = Path(__file__).resolve().parent.parent
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"
READY_TARGET_S = 0.020
COLD_RUNS = 7

# Runs in a new process: the import, the parser ready (`parser()` loads the saved one;
# `build_parser()` builds from the grammar), then the first parse (lark compiles the
# lexer's regular expressions on first use), in seconds.
COLD = r"""
import json, sys, time
t0 = time.perf_counter()
from neural_dsl import syntax
t1 = time.perf_counter()
syntax.build_parser() if sys.argv[1] == "build" else syntax.parser()
t2 = time.perf_counter()
syntax.parse_raw(sys.stdin.read())
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "ready": t2 - t1, "first_parse": t3 - t2}))
"""

# Runs inside .venv-bench: the original parser on the same files, per-file medians in us.
ORIGINAL = r"""
import json, logging, sys, time, statistics
logging.disable(logging.CRITICAL)
from neural.parser.parser import ModelTransformer, create_parser
files, rounds = json.loads(sys.stdin.read())
t0 = time.perf_counter(); parser = create_parser("network"); build = time.perf_counter() - t0
out = {"build_s": build, "parse_us": {}, "transform_us": {}}
for name, text in files.items():
    try:
        tree = parser.parse(text)
    except Exception:
        continue
    samples, full = [], []
    for _ in range(rounds):
        t = time.perf_counter(); tree = parser.parse(text); samples.append(time.perf_counter() - t)
        try:
            t = time.perf_counter(); ModelTransformer().transform(tree)
            full.append(time.perf_counter() - t + samples[-1])
        except Exception:
            pass
    out["parse_us"][name] = statistics.median(samples) * 1e6
    if full:
        out["transform_us"][name] = statistics.median(full) * 1e6
print(json.dumps(out))
"""


def time_ours(files: dict[str, str], rounds: int) -> dict[str, float]:
    per_file: dict[str, float] = {}
    for name, text in files.items():
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            with contextlib.suppress(DSLError):  # a rejected file is timed to its diagnostic
                check(text)
            samples.append(time.perf_counter() - t)
        per_file[name] = statistics.median(samples) * 1e6
    return per_file


def time_cold(text: str) -> dict[str, dict[str, float]]:
    """Medians over COLD_RUNS new processes each, ours and building alternated."""
    samples: dict[str, list[dict[str, float]]] = {"ours": [], "build": []}
    for _ in range(COLD_RUNS):
        for mode in samples:
            proc = subprocess.run(
                [sys.executable, "-c", COLD, mode],
                input=text,
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            samples[mode].append(json.loads(proc.stdout))
    return {
        mode: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for mode, runs in samples.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "dsl" / "corpus")
    args = ap.parse_args()
    files = {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted((args.corpus / "examples").glob("*.neural"))
    }

    builds = []
    for _ in range(5):
        t = time.perf_counter()
        build_parser()
        builds.append(time.perf_counter() - t)
    build_s = statistics.median(builds)

    time_ours(files, 1)  # warm the cached parser
    t = time.perf_counter()
    ours = time_ours(files, args.rounds)
    wall = time.perf_counter() - t
    p50 = statistics.median(ours.values())
    print(f"corpus: {len(files)} files, {args.rounds} rounds (parse + validate + shapes)")
    print(f"  files/s:            {len(files) * args.rounds / wall:,.0f}")
    print(f"  p50 per file:       {p50:,.0f} us")
    print(f"  parser build once:  {build_s * 1e3:,.1f} ms = {build_s * 1e6 / p50:,.0f}x a file")

    cold = time_cold(next(iter(files.values())))
    ours_ready, built_ready = cold["ours"]["ready"], cold["build"]["ready"]
    saved = parser_cache_path()
    print(f"parser ready in a new process (median of {COLD_RUNS} processes each):")
    if saved is None or not saved.is_file():
        print("  no saved parser (run `make setup`): ours builds it too")
    print(
        f"  ours (saved parser):    {ours_ready * 1e3:,.1f} ms"
        f"  (then first parse {cold['ours']['first_parse'] * 1e3:,.1f} ms;"
        f" import neural_dsl {cold['ours']['import'] * 1e3:,.0f} ms before)"
    )
    print(f"  built from the grammar: {built_ready * 1e3:,.1f} ms")
    print(f"  ratio built / ours: {built_ready / ours_ready:.1f}x")
    verdict = "met" if ours_ready < READY_TARGET_S else "NOT met"
    print(
        f"  target {READY_TARGET_S * 1e3:.0f} ms: ours at {ours_ready / READY_TARGET_S:.2f}x"
        f" of it ({verdict})"
    )

    if not BENCH_PY.exists():
        print("original Neural DSL not installed (make bench-deps): no baseline ratio")
        return
    proc = subprocess.run(
        [str(BENCH_PY), "-c", ORIGINAL],
        input=json.dumps([files, args.rounds]),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    base = json.loads(proc.stdout.strip().splitlines()[-1])
    both = sorted(set(base["parse_us"]) & set(ours))
    ratio = statistics.median(base["parse_us"][n] / ours[n] for n in both)
    print(f"original neural-dsl 0.2.9, on the {len(both)} files its grammar accepts:")
    base_p50 = statistics.median(base["parse_us"][n] for n in both)
    print(f"  its parse only, p50:        {base_p50:,.0f} us")
    print(f"  ours (parse+validate+shapes) p50: {statistics.median(ours[n] for n in both):,.0f} us")
    print(f"  ratio original-parse / ours-full (median per file): {ratio:.2f}x")
    full = sorted(set(base["transform_us"]) & set(ours))
    if full:
        r2 = statistics.median(base["transform_us"][n] / ours[n] for n in full)
        print(f"  ratio original parse+transform / ours-full on {len(full)} files: {r2:.2f}x")
    print(
        f"  parser ready in a new process: original {base['build_s'] * 1e3:,.1f} ms,"
        f" ours {ours_ready * 1e3:,.1f} ms (ratio {base['build_s'] / ours_ready:.2f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
