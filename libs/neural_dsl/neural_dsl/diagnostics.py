"""Diagnostics: every problem the library reports carries the line and column of its token."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Loc:
    """A 1-based source position."""

    line: int
    column: int


UNKNOWN_LOC = Loc(1, 1)


@dataclass(frozen=True)
class Diagnostic:
    message: str
    loc: Loc
    severity: Severity = Severity.ERROR
    # Which step found it: "limits", "syntax", "semantic" or "shape".
    stage: str = "semantic"

    @property
    def line(self) -> int:
        return self.loc.line

    @property
    def column(self) -> int:
        return self.loc.column

    def format(self, filename: str, source: str | None = None) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, then the source line with a caret under the column."""
        text = f"{filename}:{self.line}:{self.column}: {self.severity.value}: {self.message}"
        if source is not None:
            lines = source.splitlines()
            if 1 <= self.line <= len(lines):
                src = lines[self.line - 1].replace("\t", " ")
                text += f"\n    {src}\n    {' ' * (self.column - 1)}^"
        return text


@dataclass
class DSLError(Exception):
    """The library's one error type: one or more error diagnostics (plus any warnings)."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def first(self) -> Diagnostic:
        return (self.errors or self.diagnostics)[0]

    @property
    def stage(self) -> str:
        return self.first.stage

    def __str__(self) -> str:
        if not self.diagnostics:
            return "invalid program"
        d = self.first
        return f"{d.line}:{d.column}: {d.message}"


class Collector:
    """Gathers diagnostics during one pass; `raise_if_errors` turns them into a DSLError."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.items: list[Diagnostic] = []

    def error(self, message: str, loc: Loc) -> None:
        self.items.append(Diagnostic(message, loc, Severity.ERROR, self.stage))

    def warn(self, message: str, loc: Loc) -> None:
        self.items.append(Diagnostic(message, loc, Severity.WARNING, self.stage))

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)

    def raise_if_errors(self) -> None:
        if self.has_errors:
            raise DSLError(sorted(self.items, key=_order))


def _order(d: Diagnostic) -> tuple[int, int, int]:
    return (d.severity is not Severity.ERROR, d.line, d.column)
