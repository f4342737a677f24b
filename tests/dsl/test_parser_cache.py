"""The parser cache: `make setup` writes it, a new process loads it instead of building the
parser, it gives the same results, and a stale one (grammar edited) is never used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lark import Lark
from neural_dsl import DSLError, syntax

CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts parsers built from the grammar (a parser loaded from a cache builds none)."""
    calls: list[int] = []
    build = Lark._build_parser

    def counted(self: Lark) -> Any:
        calls.append(1)
        return build(self)

    monkeypatch.setattr(Lark, "_build_parser", counted)
    shared = syntax.parser
    shared.cache_clear()
    yield calls
    shared.cache_clear()  # later tests get a parser made without the spy


def test_setup_wrote_the_cache_for_this_grammar_and_parser_loads_it(builds: list[int]) -> None:
    path = syntax.parser_cache_path()
    assert path is not None and path.is_file(), "run `make setup` (it writes the parser cache)"
    assert sorted(path.parent.glob("parser-*.lark-cache")) == [path]  # no stale one left over
    program = syntax.parser().parse("network N { input: (4) layers: Dense(2) }", start="start")
    assert builds == []
    assert [n.name for n in program.networks] == ["N"]


def _results(parser: Lark, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(syntax, "parser", lambda: parser)
    cases = [json.loads(line) for line in (CORPUS / "cases.jsonl").read_text().splitlines()]
    sources = [(c["source"], "layer_start" if c["kind"] == "layer" else "start") for c in cases]
    sources += [(p.read_text(), "start") for p in sorted((CORPUS / "examples").glob("*.neural"))]
    out: list[Any] = []
    for text, start in sources:
        try:
            out.append(syntax.parse_raw(text, start))
        except DSLError as exc:
            out.append(exc.diagnostics)
    return out


def test_the_cached_parser_gives_the_built_parsers_results(
    builds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = syntax.build_parser()
    assert builds == [1]
    cached = syntax.load_parser()
    assert builds == [1]
    expected = _results(built, monkeypatch)
    assert any(isinstance(r, list) for r in expected)  # rejected sources are compared too
    assert _results(cached, monkeypatch) == expected


def test_without_a_cache_the_parser_is_built(tmp_path: Path, builds: list[int]) -> None:
    # the library installed on its own (`pip install libs/neural_dsl`, no `make setup`)
    parser = syntax.load_parser(tmp_path)
    assert builds == [1]
    assert parser.parse("network N { }", start="start").networks[0].name == "N"
    assert list(tmp_path.iterdir()) == []  # reading never writes a cache


def test_a_stale_cache_is_never_used(
    tmp_path: Path, builds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "parser-0123.lark-cache").write_bytes(b"an older grammar's cache")
    old = syntax.write_parser_cache(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [old.name]  # older caches removed
    builds.clear()
    program = syntax.load_parser(tmp_path).parse("network N { }", start="start")
    assert builds == []
    assert program.networks[0].name == "N"

    monkeypatch.setattr(syntax, "_grammar_text", _edit(syntax._grammar_text()))
    assert syntax.parser_cache_path(tmp_path) != old
    parser = syntax.load_parser(tmp_path)
    assert builds == [1]
    assert parser.parse("model M { }", start="start").networks[0].name == "M"


def test_a_cache_under_another_grammars_name_is_not_loaded(
    tmp_path: Path, builds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the key inside the file is checked too, not only the one in its name
    old = syntax.write_parser_cache(tmp_path)
    monkeypatch.setattr(syntax, "_grammar_text", _edit(syntax._grammar_text()))
    new = syntax.parser_cache_path(tmp_path)
    assert new is not None
    shutil.copyfile(old, new)
    builds.clear()
    parser = syntax.load_parser(tmp_path)
    assert builds == [1]
    assert parser.parse("model M { }", start="start").networks[0].name == "M"


# In a new process, from a copy of the package elsewhere (as the image installs it into
# site-packages): prints how the parser was made and what `network`/`model` parse to.
PROBE = """
import lark
from neural_dsl import DSLError
from neural_dsl.syntax import parse_raw
built = []
build = lark.Lark._build_parser
lark.Lark._build_parser = lambda self: built.append(1) or build(self)
names = []
for kw in ("network", "model"):
    try:
        names.append(parse_raw(kw + " N { }").networks[0].name)
    except DSLError:
        names.append(None)
print("built" if built else "loaded", names)
"""


def _probe(package: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_copied_package_loads_its_cache_and_an_edited_grammar_is_rebuilt(
    tmp_path: Path,
) -> None:
    source = Path(syntax.__file__).parent
    assert syntax.parser_cache_path() is not None
    package = tmp_path / "site" / "neural_dsl"
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
    assert _probe(package) == "loaded ['N', None]"

    grammar = package / "grammar.lark"
    grammar.write_text(_edit(grammar.read_text())())
    assert _probe(package) == "built [None, 'N']"
    assert len(list(package.glob("parser-*.lark-cache"))) == 1  # reading never writes


def _edit(text: str) -> Any:
    """The grammar as if someone renamed the `network` keyword to `model`."""
    assert 'network: "network" NAME' in text
    edited = text.replace('network: "network" NAME', 'network: "model" NAME')
    return lambda: edited
