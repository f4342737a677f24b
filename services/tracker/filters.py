"""The run filter language of SearchRuns: MLflow's syntax, plus `or` and parentheses.

    metrics.accuracy > 0.9 and params.optimizer = "Adam"
    (tags.team = 'vision' or tags.team = 'nlp') and attributes.status != "FAILED"
    params.model LIKE 'res%' and attributes.run_name ILIKE '%BASELINE%'

Parsed with lark into a small AST; a mistake is a FilterError with the column it starts at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

GRAMMAR = r"""
?start: or_expr
?or_expr: and_expr (_OR and_expr)*
?and_expr: atom (_AND atom)*
?atom: comparison
     | "(" or_expr ")"
comparison: identifier OP value
identifier: ENTITY "." key
          | ATTRIBUTE
?key: NAME | QUOTED | BACKTICKED
value: SIGNED_NUMBER -> number
     | QUOTED        -> string
OP: "<=" | ">=" | "!=" | "=" | "<" | ">" | /(?i:not\s+like|not\s+ilike|like|ilike)\b/

_OR.2: /(?i:or)\b/
_AND.2: /(?i:and)\b/
ENTITY.2: /(?i:metrics|metric|params|param|parameters|tags|tag|attributes|attribute|attr|run)(?=\.)/
ATTRIBUTE.2: /(?i:status|run_name|run_id|start_time|end_time|name)\b(?!\.)/
NAME: /[A-Za-z0-9_\-\/:]+/
QUOTED: /"(?:[^"\\]|\\.)*"/ | /'(?:[^'\\]|\\.)*'/
BACKTICKED: /`[^`]*`/
SIGNED_NUMBER: /[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/

%import common.WS
%ignore WS
"""

ENTITIES = {
    "metrics": "metrics",
    "metric": "metrics",
    "params": "params",
    "param": "params",
    "parameters": "params",
    "tags": "tags",
    "tag": "tags",
    "attributes": "attributes",
    "attribute": "attributes",
    "attr": "attributes",
    "run": "attributes",
}
ATTRIBUTES = {"status", "run_name", "name", "run_id", "start_time", "end_time"}
STATUSES = {"RUNNING", "FINISHED", "FAILED", "KILLED"}
# The moments a run's start_time and end_time can hold, in ms since the epoch.
MIN_MS, MAX_MS = -62_135_596_800_000, 253_402_300_799_999


class FilterError(ValueError):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.message = message
        self.column = column


@dataclass(frozen=True)
class Compare:
    entity: str  # metrics | params | tags | attributes
    key: str
    op: str  # = != < <= > >= like ilike not like / not ilike
    value: float | str
    column: int


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Compare | And | Or


def _unquote(text: str) -> str:
    if not text:
        return text
    if text[0] in "\"'":
        body = text[1:-1]
        return body.replace("\\" + text[0], text[0]).replace("\\\\", "\\")
    if text[0] == "`":
        return text[1:-1]
    return text


class _Build(Transformer):
    def or_expr(self, items: list[Node]) -> Or:
        return Or(tuple(items))

    def and_expr(self, items: list[Node]) -> And:
        return And(tuple(items))

    def number(self, items: list[Token]) -> tuple[float, Token]:
        value = float(items[0])
        if not math.isfinite(value):
            raise FilterError("number out of range", items[0].column)
        return value, items[0]

    def string(self, items: list[Token]) -> tuple[str, Token]:
        return _unquote(str(items[0])), items[0]

    def identifier(self, items: list[Token]) -> tuple[str, str, Token]:
        if len(items) == 1:  # a bare attribute name
            return "attributes", str(items[0]).lower(), items[0]
        entity, key = items
        return ENTITIES[str(entity).lower()], _unquote(str(key)), entity

    def comparison(self, items: list) -> Compare:  # type: ignore[type-arg]
        (entity, key, tok), op_tok, (value, value_tok) = items
        op = " ".join(str(op_tok).lower().split())
        return _check(Compare(entity, key, op, value, tok.column), value_tok.column)


def _check(c: Compare, value_column: int) -> Compare:
    like = c.op in ("like", "ilike", "not like", "not ilike")
    if c.entity == "metrics":
        if not isinstance(c.value, float) or like:
            raise FilterError(
                f"metrics.{c.key} compares with a number using = != < <= > >=", value_column
            )
    elif c.entity in ("params", "tags"):
        if not isinstance(c.value, str):
            raise FilterError(f"{c.entity}.{c.key} is text: quote the value", value_column)
        if c.op not in ("=", "!=") and not like:
            raise FilterError(f"{c.entity} compare with = != LIKE ILIKE, not {c.op}", c.column)
    else:
        key = "run_name" if c.key == "name" else c.key
        if key not in ATTRIBUTES:
            raise FilterError(
                f"unknown attribute '{c.key}' (status, run_name, run_id, start_time, end_time)",
                c.column,
            )
        if key in ("start_time", "end_time"):
            if not isinstance(c.value, float) or like:
                raise FilterError(
                    f"{key} compares with a number of milliseconds since the epoch", value_column
                )
            if not MIN_MS <= c.value <= MAX_MS:
                raise FilterError(
                    f"{key} is milliseconds since the epoch, from {MIN_MS} to {MAX_MS} "
                    "(years 1 to 9999)",
                    value_column,
                )
        elif not isinstance(c.value, str):
            raise FilterError(f"attributes.{key} is text: quote the value", value_column)
        elif key == "status" and not like and c.value.upper() not in STATUSES:
            raise FilterError(f"status is one of {', '.join(sorted(STATUSES))}", value_column)
        return Compare("attributes", key, c.op, c.value, c.column)
    return c


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", maybe_placeholders=False)


MAX_FILTER = 10_000


def parse_filter(text: str) -> Node | None:
    """The filter's AST, None for an empty filter; FilterError (with a column) otherwise."""
    if not text.strip():
        return None
    if len(text) > MAX_FILTER:
        raise FilterError(f"filter longer than {MAX_FILTER} characters", 1)
    if text.count("(") > 64:
        raise FilterError("filter nests deeper than 64 parentheses", text.index("(") + 1)
    try:
        tree = _parser().parse(text)
    except UnexpectedEOF:
        raise FilterError("unexpected end of filter", len(text) + 1) from None
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            raise FilterError("unexpected end of filter", len(text) + 1) from None
        raise FilterError(f"unexpected {str(exc.token)!r}", exc.column) from None
    except UnexpectedCharacters as exc:
        raise FilterError(f"unexpected character {text[exc.pos_in_stream]!r}", exc.column) from None
    except UnexpectedInput as exc:  # pragma: no cover - the subclasses above cover lark's cases
        raise FilterError("cannot parse the filter", getattr(exc, "column", 1)) from None
    try:
        node = _Build().transform(tree)
    except Exception as exc:  # lark wraps a FilterError raised in the transformer
        inner = getattr(exc, "orig_exc", exc)
        if isinstance(inner, FilterError):
            raise inner from None
        raise
    return node if not isinstance(node, tuple) else None


def parse_order_by(items: list[str]) -> list[tuple[str, str, bool]]:
    """["metrics.acc DESC", "start_time"] -> [(entity, key, descending)]."""
    out = []
    for item in items:
        parts = item.strip().split()
        if (
            not parts
            or len(parts) > 2
            or (len(parts) == 2 and parts[1].upper() not in ("ASC", "DESC"))
        ):
            raise FilterError(f"order_by {item!r}: use 'KEY [ASC|DESC]'", 1)
        desc = len(parts) == 2 and parts[1].upper() == "DESC"
        head, dot, key = parts[0].partition(".")
        if dot and head.lower() in ENTITIES:
            entity, key = ENTITIES[head.lower()], _unquote(key)
            if not key:
                raise FilterError(f"order_by {item!r}: name a key after {head}.", 1)
        else:
            entity, key = "attributes", parts[0].lower()
        if entity == "attributes":
            key = "run_name" if key == "name" else key
            if key not in ATTRIBUTES:
                raise FilterError(f"order_by: unknown attribute {key!r}", 1)
        out.append((entity, key, desc))
    return out
