"""The `neural` console script: the commands, and one place that turns a failed call into a
one-line message and an exit code (1 refused or not found, 3 unreachable)."""

from __future__ import annotations

import os
import sys

from . import cmd_compile, cmd_jobs, cmd_serve, cmd_tracker  # noqa: F401  (they register)
from .app import app, error_message
from .channel import DEFAULT_URL
from .errors import NeuralError


def main() -> None:
    try:
        app(prog_name="neural")
    except NeuralError as exc:
        message, code = error_message(exc, os.environ.get("NEURAL_URL") or DEFAULT_URL)
        print(f"neural: {message}", file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
