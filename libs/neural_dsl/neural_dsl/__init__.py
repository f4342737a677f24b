"""The Neural DSL: parse, validate and shape-check networks; a pure library with a CLI.

    >>> from neural_dsl import check
    >>> result = check(open("mnist.neural").read())
    >>> result.shapes["MNISTClassifier"].total_params

Nothing here imports a deep-learning framework.
"""

from .api import CheckResult, check, parse, parse_layer, parse_with_warnings, propagate_shapes
from .diagnostics import Diagnostic, DSLError, Loc, Severity
from .ir import IR_VERSION, IRFormatError, Network, Program
from .ir import dumps as ir_dumps
from .ir import loads as ir_loads
from .limits import Limits
from .shapes import ShapeReport

__all__ = [
    "IR_VERSION",
    "CheckResult",
    "DSLError",
    "Diagnostic",
    "IRFormatError",
    "Limits",
    "Loc",
    "Network",
    "Program",
    "Severity",
    "ShapeReport",
    "check",
    "ir_dumps",
    "ir_loads",
    "parse",
    "parse_layer",
    "parse_with_warnings",
    "propagate_shapes",
]
