"""The library's entry points: text in, IR (and shapes) out, or one DSLError with every problem."""

from __future__ import annotations

from dataclasses import dataclass, field

from .analyze import analyze, analyze_layer
from .diagnostics import Diagnostic, DSLError, Severity
from .ir import Layer, Network, Program
from .limits import Limits
from .shapes import ShapeReport, propagate
from .syntax import RawBranch, RawLayer, RawProgram, parse_raw


@dataclass(frozen=True)
class CheckResult:
    program: Program
    shapes: dict[str, ShapeReport]
    warnings: list[Diagnostic] = field(default_factory=list)


def _split(items: list[Diagnostic]) -> tuple[list[Diagnostic], list[Diagnostic]]:
    errors = [d for d in items if d.severity is Severity.ERROR]
    return errors, [d for d in items if d.severity is not Severity.ERROR]


def parse(text: str, limits: Limits | None = None) -> Program:
    """Parse and validate a program: the IR, or DSLError (syntax or semantic)."""
    return parse_with_warnings(text, limits)[0]


def parse_with_warnings(
    text: str, limits: Limits | None = None
) -> tuple[Program, list[Diagnostic]]:
    raw: RawProgram = parse_raw(text, "start", limits)
    program, out = analyze(raw, limits)
    out.raise_if_errors()
    return program, _split(out.items)[1]


def propagate_shapes(network: Network, limits: Limits | None = None) -> ShapeReport:
    report, out = propagate(network, limits)
    out.raise_if_errors()
    assert report is not None
    return report


def check(text: str, limits: Limits | None = None) -> CheckResult:
    """What `neural_dsl check` does: parse, validate, and propagate shapes of every network."""
    program, warnings = parse_with_warnings(text, limits)
    shapes: dict[str, ShapeReport] = {}
    problems: list[Diagnostic] = []
    for net in program.networks:
        report, out = propagate(net, limits)
        problems.extend(out.items)
        if report is not None:
            shapes[net.name] = report
    errors, more_warnings = _split(problems)
    if errors:
        raise DSLError(errors + warnings + more_warnings)
    return CheckResult(program, shapes, warnings + more_warnings)


def parse_layer(text: str, prelude: str = "", limits: Limits | None = None) -> list[Layer]:
    """One layer line (`Dense(64, "relu") * 2`), after the `define` blocks in `prelude`.

    Returns the layers it expands to (a macro or `* N` gives several)."""
    defines = parse_raw(prelude, "start", limits).defines if prelude.strip() else []
    raw: RawLayer | RawBranch = parse_raw(text, "layer_start", limits)
    layers, out = analyze_layer(raw, defines, limits)
    out.raise_if_errors()
    return layers
