"""docs/architecture.svg is the render of docs/architecture.dot as it stands (`make diagram`).

No Graphviz is needed: Graphviz writes every node's id, every edge's `tail->head` and every
cluster's name into the SVG's `<title>` elements and every label line into a `<text>`, so the
two files are compared through those.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
DOT = ROOT / "docs" / "architecture.dot"
SVG = ROOT / "docs" / "architecture.svg"
SVG_NS = "{http://www.w3.org/2000/svg}"

STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
LABEL = re.compile(r'\b(?:label|xlabel|headlabel|taillabel)\s*=\s*("(?:[^"\\]|\\.)*")')
COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/|^\s*#[^\n]*", re.DOTALL | re.MULTILINE)
ATTRIBUTES = re.compile(r"\[[^\]]*\]")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = {"graph", "node", "edge", "digraph", "subgraph", "strict"}


@dataclass
class Drawing:
    """What a diagram is made of, as the comparison sees it."""

    nodes: set[str] = field(default_factory=set)
    edges: set[tuple[str, str]] = field(default_factory=set)
    clusters: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)


def label_lines(quoted: str) -> set[str]:
    """A quoted DOT label's lines as Graphviz draws them (`\\n`, `\\l`, `\\r` end a line)."""
    body = quoted[1:-1]
    lines = re.split(r"\\[nlr]", body)
    return {line.replace('\\"', '"').replace("\\\\", "\\").strip() for line in lines} - {""}


def parse_dot(text: str) -> Drawing:
    """Nodes, edges (chains included), clusters and label lines of a DOT file whose node ids
    are bare identifiers; a quoted id is dropped here, so the SVG's node then fails the test."""
    drawing = Drawing()
    text = COMMENT.sub("", text)
    for match in LABEL.finditer(text):
        drawing.texts |= label_lines(match.group(1))
    bare = ATTRIBUTES.sub(" ", STRING.sub('""', text))
    for statement in re.split(r"[;{}\n]", bare):
        statement = statement.strip()
        if not statement or "=" in statement:
            continue
        words = statement.split()
        if words[0] in ("subgraph", "digraph", "graph", "strict"):
            if words[0] == "subgraph" and len(words) > 1 and words[1].startswith("cluster"):
                drawing.clusters.add(words[1])
            continue
        ends = [part.strip() for part in statement.split("->")]
        if not all(IDENT.fullmatch(end) for end in ends) or ends[0] in KEYWORDS:
            continue
        drawing.nodes.update(ends)
        drawing.edges.update(pairwise(ends))
    return drawing


def parse_svg(text: str) -> Drawing:
    drawing = Drawing()
    root = ET.fromstring(text)
    for group in root.iter(f"{SVG_NS}g"):
        title = group.find(f"{SVG_NS}title")
        if title is None or title.text is None:
            continue
        kind = group.get("class")
        if kind == "node":
            drawing.nodes.add(title.text)
        elif kind == "edge":
            tail, head = title.text.split("->")
            drawing.edges.add((tail, head))
        elif kind == "cluster":
            drawing.clusters.add(title.text)
    drawing.texts = {(t.text or "").strip() for t in root.iter(f"{SVG_NS}text")} - {""}
    return drawing


def differences(dot_text: str, svg_text: str) -> list[str]:
    """What the SVG lacks of the .dot, or has that the .dot lacks; empty when they agree."""
    dot, svg = parse_dot(dot_text), parse_svg(svg_text)
    found = []
    for what, want, have in (
        ("node", dot.nodes, svg.nodes),
        ("edge", dot.edges, svg.edges),
        ("cluster", dot.clusters, svg.clusters),
    ):
        found += [f"{what} {item} is in the .dot, not the SVG" for item in sorted(want - have)]
        found += [f"{what} {item} is in the SVG, not the .dot" for item in sorted(have - want)]
    found += [f"label text {t!r} is not in the SVG" for t in sorted(dot.texts - svg.texts)]
    return found


def test_svg_is_the_render_of_the_dot() -> None:
    found = differences(DOT.read_text(encoding="utf-8"), SVG.read_text(encoding="utf-8"))
    assert not found, "run `make diagram` and commit docs/architecture.svg:\n" + "\n".join(found)


def test_the_diagram_shows_every_service_and_the_gateway() -> None:
    nodes = parse_dot(DOT.read_text(encoding="utf-8")).nodes
    assert {"envoy", "authz", "ratelimit", "compiler", "trainer", "tracker", "deployer"} <= nodes


@pytest.mark.parametrize(
    ("edit", "reported"),
    [
        (lambda dot: dot.replace("  cli -> envoy;", "  cli -> envoy;\n  cli -> tracker;"), "edge"),
        (lambda dot: dot.replace("  cli -> envoy;", "  cli -> envoy -> newcomer;"), "node"),
        (lambda dot: dot.replace("compiler :50051", "compiler :50061"), "label text"),
        (
            lambda dot: re.sub(r"\n\s*browser \[[^\n]*", "", dot).replace("browser -> envoy;", ""),
            "node",
        ),
    ],
    ids=["added edge", "added node", "changed label", "removed node"],
)
def test_an_edit_not_rendered_is_reported(edit, reported: str) -> None:
    dot = DOT.read_text(encoding="utf-8")
    edited = edit(dot)
    assert edited != dot, "the edit no longer applies to docs/architecture.dot"
    found = differences(edited, SVG.read_text(encoding="utf-8"))
    assert any(line.startswith(reported) for line in found), found
