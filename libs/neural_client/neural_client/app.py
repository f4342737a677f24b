"""The `neural` Typer app and what its commands share: the client, output, exit codes.

Exit codes: 0 done; 1 a caller's mistake or a refusal (bad program, not found, no key,
permission); 2 a usage error (Typer's); 3 the platform could not be reached."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from .client import Client
from .errors import NeuralError
from .render import dumps

EXIT_FAILED = 1
EXIT_UNREACHABLE = 3

app = typer.Typer(
    name="neural",
    help="The Neural platform from the command line: compile, train, track, deploy, predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
jobs_app = typer.Typer(help="Background jobs: list, get, cancel, watch.", no_args_is_help=True)
runs_app = typer.Typer(help="Tracked runs: list, get, compare.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (admin): create, list, revoke.", no_args_is_help=True)
deployments_app = typer.Typer(
    help="Deployments (served models): list, get, delete.", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.add_typer(keys_app, name="keys")
app.add_typer(deployments_app, name="deployments")


def make_console() -> Console:
    """Rich's console; written to a pipe or a file it is wide (160 columns unless COLUMNS
    says), so ids and lines a script greps are not folded at 80."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


console = make_console()

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
SourceFile = Annotated[
    Path,
    typer.Argument(exists=True, dir_okay=False, readable=True, help="A Neural DSL program."),
]


def client() -> Client:
    return Client()


def read_source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}")


def emit_json(value: Any) -> None:
    # plain print, never Rich: scripts parse it, and Rich would wrap long lines
    print(dumps(value))


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    print(f"neural: {message}", file=sys.stderr)
    raise typer.Exit(code)


def error_message(exc: NeuralError, url: str) -> tuple[str, int]:
    """The one line a shell user sees for a failed call, and the exit code."""
    if exc.unreachable:
        return f"the platform at {url} is unreachable ({exc})", EXIT_UNREACHABLE
    return str(exc), EXIT_FAILED
