"""`python -m neural_dsl check|shapes|ir FILE`.

check: exit 0 when valid; otherwise exit 1 and `FILE:LINE:COL: error: MESSAGE` with the
source line and a caret, for every error found. Exit 2 for usage and I/O errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .api import check, parse
from .diagnostics import Diagnostic, DSLError
from .ir import program_to_json


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def _report(path: str, source: str, diags: Sequence[Diagnostic]) -> None:
    for d in diags:
        print(d.format(path, source), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="neural_dsl", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (
        ("check", "parse, validate and shape-check a program"),
        ("shapes", "print the output shape and parameter count after every layer (JSON)"),
        ("ir", "print the program's IR (JSON)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("file", help="a .neural file, or - for standard input")
    args = ap.parse_args(argv)

    try:
        source = _read(args.file)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{args.file}: error: cannot read: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "ir":
            print(json.dumps(program_to_json(parse(source)), indent=2))
            return 0
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
