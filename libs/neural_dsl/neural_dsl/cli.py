"""`python -m neural_dsl check|shapes|ir|compile|hparams|backends`.

check: exit 0 when valid; otherwise exit 1 and `FILE:LINE:COL: error: MESSAGE` with the
source line and a caret, for every error found. Exit 2 for usage and I/O errors.
compile FILE --backend pytorch|tensorflow|onnx [-o OUT] [--hparams JSON] [--network NAME]:
a program with HPO(...) parameters needs a value for each (the error names them). `-o -`
writes to standard output (ONNX only when it is not a terminal); without `-o` the output is
named after the input: model.neural -> model.py (pytorch), model_keras.py (tensorflow),
model.onnx (onnx); standard input goes to standard output.
hparams FILE: every HPO(...) name with its search space and line.
A closed standard output (`| head`) ends the command quietly with exit status 141, as a
process stopped by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .api import check, parse
from .diagnostics import Diagnostic, DSLError
from .ir import Program, program_to_json


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _report(path: str, source: str, diags: Sequence[Diagnostic]) -> None:
    for d in diags:
        print(d.format(path, source), file=sys.stderr)


# Output names derived from the input's stem, per backend (`compile` without `-o`).
OUTPUT_SUFFIX = {"pytorch": ".py", "tensorflow": "_keras.py", "onnx": ".onnx"}
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a reader that went away shows up here, not at interpreter exit
    except BrokenPipeError:
        # The reader closed the pipe (`| head`): nothing more can be said there. Point stdout
        # at /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="neural_dsl", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (
        ("check", "parse, validate and shape-check a program"),
        ("shapes", "print the output shape and parameter count after every layer (JSON)"),
        ("ir", "print the program's IR (JSON)"),
        ("compile", "generate PyTorch or TensorFlow/Keras code, or an ONNX model"),
        ("hparams", "list every HPO(...) name with its search space and line"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", help="a .neural file, or - for standard input")
        if name == "compile":
            p.add_argument("--backend", required=True, choices=("pytorch", "tensorflow", "onnx"))
            p.add_argument(
                "-o",
                "--output",
                help="the .py or .onnx file to write, - for standard output (default: named "
                "after the input, e.g. model.py, model_keras.py, model.onnx)",
            )
            p.add_argument(
                "--hparams",
                help="values for the HPO(...) parameters: a JSON object or a JSON file, "
                "e.g. '{\"layers.dense_1.units\": 128}'",
            )
            p.add_argument("--network", help="which network, when the file declares several")
        if name == "hparams":
            p.add_argument("--json", action="store_true", help="as JSON")
    b = sub.add_parser("backends", help="print which layer types each backend supports")
    b.add_argument("--json", action="store_true", help="as JSON")
    args = ap.parse_args(argv)
    if args.command == "backends":
        return _backends(args.json)

    try:
        source = _read(args.file)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.file}: error: cannot read: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "ir":
            print(json.dumps(program_to_json(parse(source)), indent=2))
            return 0
        if args.command == "compile":
            return _compile(args, source)
        if args.command == "hparams":
            return _list_hparams(parse(source), args.json)
        result = check(source)
    except DSLError as exc:
        _report(args.file, source, exc.diagnostics)
        return 1
    _report(args.file, source, result.warnings)
    if args.command == "shapes":
        reports = [r.to_json() for r in result.shapes.values()]
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2))
    else:
        names = ", ".join(
            f"{n} ({r.total_params:,} parameters)" if r.total_params is not None else n
            for n, r in result.shapes.items()
        )
        print(f"{args.file}: ok: {names}")
    return 0


def _hparams(text: str | None) -> dict[str, object] | None:
    if text is None:
        return None
    raw = text if text.lstrip().startswith("{") else Path(text).read_text(encoding="utf-8")
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("--hparams must be a JSON object of name: value")
    return value


def _compile(args: argparse.Namespace, source: str) -> int:
    from .backends import compile_network

    try:
        hparams = _hparams(args.hparams)
    except (OSError, ValueError) as exc:
        print(f"{args.file}: error: --hparams: {exc}", file=sys.stderr)
        return 2
    program = parse(source)
    names = [n.name for n in program.networks]
    if args.network:
        if args.network not in names:
            print(
                f"{args.file}: error: no network {args.network!r} (has: {', '.join(names)})",
                file=sys.stderr,
            )
            return 2
        network = program.get(args.network)
    elif len(names) != 1:
        print(
            f"{args.file}: error: {len(names)} networks ({', '.join(names)}): pick one with "
            "--network",
            file=sys.stderr,
        )
        return 2
    else:
        network = program.network
    output = args.output or _default_output(args.file, args.backend)
    if output == "-" and args.backend == "onnx" and sys.stdout.isatty():
        print(
            f"{args.file}: error: an ONNX model is binary: redirect standard output to a file "
            "or a pipe, or name one with -o",
            file=sys.stderr,
        )
        return 2
    result = compile_network(network, args.backend, hparams)
    # An ONNX model is streamed out, its weights never copied (see onnx_backend.Lowering).
    if output == "-":
        if result.lowered is not None:
            result.lowered.write(sys.stdout.buffer)
        else:
            sys.stdout.write(result.source or "")
    elif result.lowered is not None:
        with open(output, "wb") as f:
            result.lowered.write(f)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(result.source or "")
    for note in result.warnings:
        print(f"{args.file}: warning: {note}", file=sys.stderr)
    total = result.shapes.total_params
    # the summary goes to stderr when stdout carries the model
    summary = f"{'<stdout>' if output == '-' else output}: {args.backend}, "
    summary += f"network {network.name}, {total:,} parameters"
    print(summary, file=sys.stderr if output == "-" else sys.stdout)
    return 0


def _default_output(path: str, backend: str) -> str:
    """`model.neural` -> `model.py`, `model_keras.py` or `model.onnx`, beside the input;
    standard input has no name, so its output goes to standard output."""
    if path == "-":
        return "-"
    source = Path(path)
    return str(source.with_name(source.stem + OUTPUT_SUFFIX[backend]))


def _list_hparams(program: Program, as_json: bool) -> int:
    from .hparams import space_text

    rows = [
        {
            "network": network.name,
            "name": h.name,
            "space": space_text(h.space),
            "line": h.loc.line,
            "column": h.loc.column,
        }
        for network in program.networks
        for h in network.hpo_params()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    several = len(program.networks) > 1
    for r in rows:
        where = f"{r['network']}." if several else ""
        print(f"{r['line']}:{r['column']}  {where}{r['name']}  {r['space']}")
    return 0


def _backends(as_json: bool) -> int:
    from . import catalog
    from .backends import BACKENDS, support_matrix

    matrix = support_matrix()
    if as_json:
        print(json.dumps(matrix, indent=2))
        return 0
    print(f"{'layer':26s} {'family':14s} " + " ".join(f"{b:10s}" for b in BACKENDS))
    for name, row in matrix.items():
        marks = " ".join(f"{'yes' if row[b] else '-':10s}" for b in BACKENDS)
        print(f"{name:26s} {catalog.LAYERS[name].family:14s} {marks}")
    return 0
