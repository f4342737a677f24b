"""`neural validate` and `neural compile`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer

from .app import JsonOption, SourceFile, app, client, emit_json, fail, read_source
from .client import BACKENDS, Client
from .errors import NeuralError
from .render import diagnostic, to_dict

OUTPUT_SUFFIX = {"pytorch": ".py", "tensorflow": "_keras.py", "onnx": ".onnx"}


def print_diagnostics(filename: str, source: str, diagnostics: list) -> None:
    for d in diagnostics:
        print(diagnostic(filename, source, d), file=sys.stderr)


def explain_invalid(api: Client, path: Path, source: str, exc: NeuralError) -> None:
    """A refused program: its diagnostics with carets (from Validate) and exit 1."""
    if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
        raise exc
    answer = api.validate(source)
    if answer.valid:
        raise exc
    print_diagnostics(str(path), source, list(answer.diagnostics))
    raise typer.Exit(1)


@app.command()
def validate(file: SourceFile, json: JsonOption = False) -> None:
    """Check a program: diagnostics with the source line and a caret; exit 1 when invalid."""
    source = read_source(file)
    answer = client().validate(source)
    if json:
        emit_json(answer)
    else:
        print_diagnostics(str(file), source, list(answer.diagnostics))
        if answer.valid:
            for name, report in sorted(answer.shapes.items()):
                known = report.HasField("total_params")
                params = f", {report.total_params} parameters" if known else ""
                shape = tuple(report.output_shape)
                print(f"{file}: network {name}: output {shape}{params}")
            print(f"{file}: ok")
    if not answer.valid:
        raise typer.Exit(1)


@app.command()
def compile(
    file: SourceFile,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help=f"One of {', '.join(BACKENDS)}.")
    ] = "pytorch",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write the code or ONNX.")
    ] = None,
    name: Annotated[str, typer.Option(help="The model's name.")] = "",
    json: JsonOption = False,
) -> None:
    """Compile a program on the platform and write the result (code, or an ONNX file)."""
    if backend not in BACKENDS:
        fail(f"unknown backend {backend!r}: one of {', '.join(BACKENDS)}", 2)
    source = read_source(file)
    out = output or file.with_name(file.stem + OUTPUT_SUFFIX[backend])
    api = client()
    try:
        answer = api.compile(source, backend=backend, name=name or file.stem, out=out)
    except NeuralError as exc:
        explain_invalid(api, file, source, exc)
        raise
    print_diagnostics(str(file), source, list(answer.diagnostics))
    if json:
        emit_json({"model": to_dict(answer.model), "cached": answer.cached, "output": str(out)})
        return
    model = answer.model
    print(f"model {model.id} ({model.network}, {model.total_params} parameters) -> {out}")
