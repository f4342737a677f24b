"""Text -> syntax tree: the lark LALR parser, limits checked before parsing, friendly syntax errors.

The output (`Raw*` dataclasses) is what the user wrote, with locations, before any
meaning is given to it; `analyze.py` turns it into the IR.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .diagnostics import Collector, Diagnostic, DSLError, Loc, Severity
from .limits import Limits

START_RULES = ("start", "layer_start", "value")


# ---------------------------------------------------------------- raw syntax
@dataclass
class RawValue:
    """A value as written. kind: number | string | ident | call | tuple | list."""

    kind: str
    value: Any  # python value for number/string/ident; list[RawValue] for tuple/list
    loc: Loc
    name: str = ""  # callee for `call`
    args: list[RawArg] = field(default_factory=list)  # for `call`


@dataclass
class RawArg:
    name: str | None  # None for positional
    value: RawValue
    loc: Loc


@dataclass
class RawLayer:
    name: str
    loc: Loc
    args: list[RawArg] | None  # None: written without parentheses (`ConvBlock`)
    block: list[RawLayer | RawBranch] | None
    devices: list[tuple[str, Loc]] = field(default_factory=list)
    repeats: list[tuple[RawValue, Loc]] = field(default_factory=list)


@dataclass
class RawBranch:
    name: str
    loc: Loc
    block: list[RawLayer | RawBranch]


@dataclass
class RawSection:
    kind: str  # input | layers | loss | optimizer | metrics | train | execution
    loc: Loc
    payload: Any


@dataclass
class RawNetwork:
    name: str
    loc: Loc
    sections: list[RawSection]


@dataclass
class RawDefine:
    name: str
    loc: Loc
    body: list[RawLayer | RawBranch]


@dataclass
class RawResearch:
    name: str | None
    loc: Loc
    blocks: list[tuple[str, Loc, list[tuple[str, RawValue, Loc]]]]


@dataclass
class RawProgram:
    networks: list[RawNetwork] = field(default_factory=list)
    defines: list[RawDefine] = field(default_factory=list)
    research: list[RawResearch] = field(default_factory=list)


# ---------------------------------------------------------------- parser
# Options that shape the parse tables; the transformer is given at load time, never saved.
_LARK_OPTIONS: dict[str, Any] = {
    "parser": "lalr",
    "lexer": "contextual",
    "start": list(START_RULES),
    "maybe_placeholders": False,
}
_CACHE_GLOB = "parser-*.lark-cache"
# The package's directory; None when it is not on a file system (a zip import).
_HERE: Path | None = (
    Path(__file__).parent if (Path(__file__).parent / "grammar.lark").is_file() else None
)


def _grammar_text() -> str:
    # A plain read where possible: importlib.resources' first use costs a few ms of imports.
    if _HERE is not None:
        return (_HERE / "grammar.lark").read_text(encoding="utf-8")
    return resources.files(__package__).joinpath("grammar.lark").read_text(encoding="utf-8")


def _full_grammar() -> str:
    return _grammar_text() + "\nlayer_start: _layer_item\n"


def build_parser() -> Lark:
    """Build a fresh parser (what `bench/dsl_parse.py` times as the baseline)."""
    # The transformer runs inside the LALR parser, so no parse tree is built at all;
    # positions come from the tokens (keywords and brackets are kept for that).
    return Lark(_full_grammar(), transformer=_ToRaw(), **_LARK_OPTIONS)


def _cache_key() -> str:
    """What the saved tables depend on: the grammar, the options, lark's and Python's versions."""
    options = "".join(f"{k}{v}" for k, v in sorted(_LARK_OPTIONS.items()))
    seed = f"{_full_grammar()}\0{options}\0{lark.__version__}\0{sys.version_info[:2]}"
    return hashlib.sha256(seed.encode()).hexdigest()


def _cache_file(directory: Path | None, key: str) -> Path | None:
    directory = directory if directory is not None else _HERE
    return directory / f"parser-{key[:24]}.lark-cache" if directory is not None else None


def parser_cache_path(directory: Path | None = None) -> Path | None:
    """Where the saved parser for this grammar, lark and Python lives (None: the package is
    not on a file system, e.g. a zip import).

    The key is in the name, so a stale file (grammar edited, lark upgraded) is never opened.
    The file is a pickle (lark's `Lark.save`), so it lives only in the package's own directory,
    written at build time: whoever can write there can change this code anyway. Never in a
    shared temporary directory, where another user could plant one."""
    return _cache_file(directory, _cache_key())


def load_parser(directory: Path | None = None) -> Lark:
    """The parser saved by `make setup` (and the image's build), or built when there is none
    (the library installed on its own): the same parser either way. Never writes."""
    key = _cache_key()
    path = _cache_file(directory, key)
    if path is None or not path.is_file():
        return build_parser()
    with path.open("rb") as f:
        if f.readline().rstrip(b"\n") != key.encode():
            return build_parser()  # a file renamed or copied in: not this grammar's
        # What lark's own `cache=` option does with the file `Lark.save` wrote: the
        # transformer is not saved (it is code), so it is given here.
        return Lark.__new__(Lark)._load(f, transformer=_ToRaw())


def write_parser_cache(directory: Path | None = None) -> Path:
    """Save the parser for the current grammar (build time only), remove older ones, and
    return the file's path."""
    key = _cache_key()
    path = _cache_file(directory, key)
    if path is None:
        raise RuntimeError(f"{__package__} is not on a file system: no parser cache to write")
    # Written beside it, then renamed: a process starting meanwhile never reads half a file.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(key.encode() + b"\n")
            build_parser().save(f, exclude_options=("transformer",))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for old in path.parent.glob(_CACHE_GLOB):
        if old != path:
            old.unlink()
    return path


@lru_cache(maxsize=1)
def parser() -> Lark:
    return load_parser()


def _loc(token: Token) -> Loc:
    return Loc(token.line or 1, token.column or 1)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def decode_string(token: str) -> str:
    """Decode a quoted STRING token; only simple escapes, never Python evaluation."""
    body = token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _number(tok: Token) -> int | float:
    text = str(tok)
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise DSLError(
            [Diagnostic(f"number {text} is out of range", _loc(tok), Severity.ERROR, "syntax")]
        )
    return value


class _ToRaw(Transformer):
    """Parse tree -> Raw* objects. Purely structural: no meaning is checked here."""

    # values
    def number(self, children: list[Token]) -> RawValue:
        tok = children[0]
        return RawValue("number", _number(tok), _loc(tok))

    def string(self, children: list[Token]) -> RawValue:
        tok = children[0]
        return RawValue("string", decode_string(str(tok)), _loc(tok))

    def ident(self, children: list[Token]) -> RawValue:
        tok = children[0]
        return RawValue("ident", str(tok), _loc(tok))

    def tuple(self, children: list[RawValue]) -> RawValue:
        lpar, *items = children
        return RawValue("tuple", items, _loc(lpar))

    def list(self, children: list[RawValue]) -> RawValue:
        lsqb, *items = children
        return RawValue("list", items, _loc(lsqb))

    def call(self, children: list[Any]) -> RawValue:
        name, *args = children
        return RawValue("call", None, _loc(name), name=str(name), args=[_arg(a) for a in args])

    def named_arg(self, children: list[Any]) -> RawArg:
        name, value = children
        return RawArg(str(name), value, _loc(name))

    def arglist(self, children: list[Any]) -> tuple[str, list[RawArg]]:
        return ("args", [_arg(a) for a in children])

    # layers
    def device(self, children: list[Token]) -> tuple[str, str, Loc]:
        tok = children[0]
        return ("device", decode_string(str(tok)), _loc(tok))

    def repeat(self, children: list[Token]) -> tuple[str, RawValue, Loc]:
        tok = children[0]
        return ("repeat", RawValue("number", _number(tok), _loc(tok)), _loc(tok))

    def block(self, children: list[Any]) -> tuple[str, list[Any]]:
        return ("block", list(children))

    def layer(self, children: list[Any]) -> RawLayer:
        name_tok = children[0]
        layer = RawLayer(str(name_tok), _loc(name_tok), None, None)
        for tag, *rest in children[1:]:
            if tag == "device":
                layer.devices.append((rest[0], rest[1]))
            elif tag == "repeat":
                layer.repeats.append((rest[0], rest[1]))
            elif tag == "args":
                layer.args = rest[0]
            else:
                layer.block = rest[0]
        return layer

    def branch(self, children: list[Any]) -> RawBranch:
        name, (_, block) = children
        return RawBranch(str(name), _loc(name), block)

    def layer_start(self, children: list[Any]) -> Any:
        return children[0]

    # sections
    def input_section(self, children: list[Any]) -> RawSection:
        return RawSection("input", _loc(children[0]), children[1])

    def named_inputs(self, children: list[Any]) -> list[tuple[str, RawValue, Loc]]:
        return list(children)

    def named_input(self, children: list[Any]) -> tuple[str, RawValue, Loc]:
        name, shape = children
        return (str(name), shape, _loc(name))

    def layers_section(self, children: list[Any]) -> RawSection:
        return RawSection("layers", _loc(children[0]), list(children[1:]))

    def loss_section(self, children: list[Any]) -> RawSection:
        return RawSection("loss", _loc(children[0]), children[1])

    def optimizer_section(self, children: list[Any]) -> RawSection:
        return RawSection("optimizer", _loc(children[0]), children[1])

    def metrics_section(self, children: list[Any]) -> RawSection:
        return RawSection("metrics", _loc(children[0]), children[1])

    def setting(self, children: list[Any]) -> tuple[str, RawValue, Loc]:
        name, value = children
        return (str(name), value, _loc(name))

    def settings_block(self, children: list[Any]) -> list[Any]:
        return list(children)

    def train_section(self, children: list[Any]) -> RawSection:
        return RawSection("train", _loc(children[0]), children[1])

    def execution_section(self, children: list[Any]) -> RawSection:
        return RawSection("execution", _loc(children[0]), children[1])

    # top level
    def network(self, children: list[Any]) -> RawNetwork:
        name, *sections = children
        return RawNetwork(str(name), _loc(name), list(sections))

    def define(self, children: list[Any]) -> RawDefine:
        name, *body = children
        return RawDefine(str(name), _loc(name), list(body))

    def research_block(self, children: list[Any]) -> tuple[str, Loc, list[Any]]:
        name, settings = children
        return (str(name), _loc(name), settings)

    def research(self, children: list[Any]) -> RawResearch:
        keyword, *rest = children
        name = None
        if rest and isinstance(rest[0], Token):
            name = str(rest.pop(0))
        return RawResearch(name, _loc(keyword), rest)

    def start(self, children: list[Any]) -> RawProgram:
        prog = RawProgram()
        for c in children:
            if isinstance(c, RawNetwork):
                prog.networks.append(c)
            elif isinstance(c, RawDefine):
                prog.defines.append(c)
            elif isinstance(c, RawResearch):
                prog.research.append(c)
        return prog


def _arg(a: Any) -> RawArg:
    return a if isinstance(a, RawArg) else RawArg(None, a, a.loc)


# ---------------------------------------------------------------- errors
_TOKEN_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "$END": "end of input",
}


def _describe_terminals(names: set[str]) -> str:
    p = parser()
    words = set()
    for n in names:
        if n in _TOKEN_WORDS:
            words.add(_TOKEN_WORDS[n])
            continue
        try:
            pattern = p.get_terminal(n).pattern
        except KeyError:
            words.add(n)
            continue
        words.add(f"'{pattern.value}'" if pattern.type == "str" else n)
    return ", ".join(sorted(words))


EOF_MESSAGE = "Unexpected end of input - Check for missing closing braces"


def _end_loc(text: str) -> Loc:
    lines = text.split("\n")
    return Loc(len(lines), len(lines[-1]) + 1)


def _syntax_diagnostic(exc: UnexpectedInput, text: str) -> Diagnostic:
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        return Diagnostic(EOF_MESSAGE, _end_loc(text), Severity.ERROR, "syntax")
    loc = Loc(exc.line if exc.line > 0 else 1, exc.column if exc.column > 0 else 1)
    if isinstance(exc, UnexpectedToken):
        expected = _describe_terminals(set(exc.accepts or exc.expected))
        msg = f"unexpected {exc.token.type.lower()} '{exc.token}'"
        if exc.token.type in ("NAME", "NUMBER", "STRING"):
            msg = f"unexpected {_TOKEN_WORDS[exc.token.type][2:]} {str(exc.token)!r}"
        return Diagnostic(f"{msg}; expected {expected}", loc, Severity.ERROR, "syntax")
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        hint = " (strings end on the same line they start)" if char in "\"'" else ""
        return Diagnostic(f"unexpected character {char!r}{hint}", loc, Severity.ERROR, "syntax")
    return Diagnostic(str(exc).splitlines()[0], loc, Severity.ERROR, "syntax")


def _keyword_as_name(exc: UnexpectedInput) -> bool:
    """Section keywords (`loss`, `metrics`, ...) are reserved only where a section may start.

    After a value, LALR's merged look-ahead lets the lexer see `loss` as the keyword even
    inside `metrics { loss: 0.05 }`; where the parser wanted a name, feed it as one."""
    if not isinstance(exc, UnexpectedToken):
        return False
    tok = exc.token
    if tok.type != "NAME" and "NAME" in exc.accepts and re.fullmatch(r"[A-Za-z_]\w*", str(tok)):
        exc.interactive_parser.feed_token(Token.new_borrow_pos("NAME", str(tok), tok))
        return True
    return False


# ---------------------------------------------------------------- limits before parsing
def check_source_limits(text: str, limits: Limits) -> None:
    """Size and bracket nesting, checked in one linear pass before lark sees the text.

    Parsing is linear, but turning the tree into objects recurses: a limit on nesting
    keeps `((((((...` from exhausting the stack."""
    out = Collector("limits")
    size = len(text.encode("utf-8", errors="replace"))
    if size > limits.max_source_bytes:
        out.error(f"source is {size} bytes, over the limit of {limits.max_source_bytes}", Loc(1, 1))
        out.raise_if_errors()
    depth = 0
    for m in _BRACKETS_OUTSIDE_STRINGS.finditer(text):
        ch = m.group()
        if ch in "([{":
            depth += 1
            if depth > limits.max_nesting_depth:
                pos = m.start()
                line = text.count("\n", 0, pos) + 1
                column = pos - (text.rfind("\n", 0, pos) + 1) + 1
                out.error(
                    f"nesting deeper than {limits.max_nesting_depth} levels of brackets",
                    Loc(line, column),
                )
                out.raise_if_errors()
        elif ch in ")]}":
            depth = max(0, depth - 1)


# Strings and comments are matched whole (and ignored); brackets one by one.
_BRACKETS_OUTSIDE_STRINGS = re.compile(
    r""""(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|\#[^\n]*|//[^\n]*|[()\[\]{}]"""
)


def parse_raw(text: str, start: str = "start", limits: Limits | None = None) -> Any:
    """Parse `text` with the given start rule into Raw* objects, or raise DSLError."""
    limits = limits or Limits()
    check_source_limits(text, limits)
    try:
        return parser().parse(text, start=start, on_error=_keyword_as_name)
    except UnexpectedInput as exc:
        raise DSLError([_syntax_diagnostic(exc, text)]) from None
