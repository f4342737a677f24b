"""Runs the compatibility corpus (tests/dsl/corpus) through the library.

`python -m tests.dsl.corpus_eval` prints the agreement figures; the tests in
test_corpus.py pin every outcome, including the cases where we decided against
the corpus (DECISIONS).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neural_dsl import DSLError, check, parse, parse_layer
from neural_dsl.ir import HPO, Choice, Layer, LogRange, Network, Range, Schedule
from neural_dsl.syntax import parse_raw


@dataclass
class Outcome:
    accepted: bool
    stage: str | None  # the stage that rejected it: syntax | semantic | shape | limits
    errors: list[str]
    meaning: dict[str, Any] | None  # the corpus-shaped view of what we understood


# ---------------------------------------------------------------- IR -> corpus shape
def value_view(v: Any) -> Any:
    if isinstance(v, HPO):
        s = v.space
        if isinstance(s, Choice):
            return {"hpo": {"type": "categorical", "values": [value_view(x) for x in s.values]}}
        if isinstance(s, Range):
            out = {"type": "range", "start": s.start, "end": s.end}
            if s.step is not None:
                out["step"] = s.step
            return {"hpo": out}
        assert isinstance(s, LogRange)
        return {"hpo": {"type": "log_range", "low": s.low, "high": s.high}}
    if isinstance(v, Schedule):
        return {"type": v.type, "params": {p.name: value_view(p.value) for p in v.params}}
    if isinstance(v, tuple):
        return [value_view(x) for x in v]
    return v


def layer_view(layer: Layer) -> dict[str, Any]:
    if layer.type == "Branch":
        return {
            "type": "Branch",
            "name": layer.get("input"),
            "sublayers": [layer_view(s) for s in layer.sublayers],
        }
    params = {p.name: value_view(p.value) for p in layer.params}
    subs = [layer_view(s) for s in layer.sublayers]
    type_name = layer.type
    if layer.wrapped is not None:
        # TimeDistributed(Dense(...), dropout=r) { ... }: the wrapped layer, then dropout,
        # then the block, at every time step.
        type_name = f"{layer.type}({layer.wrapped.type})"
        dropout = params.pop("dropout", None)
        params = {p.name: value_view(p.value) for p in layer.wrapped.params}
        if dropout is not None:
            subs.insert(0, {"type": "Dropout", "params": {"rate": dropout}, "sublayers": []})
    out: dict[str, Any] = {"type": type_name, "params": params, "sublayers": subs}
    if layer.device:
        out["device"] = layer.device
    return out


def layers_view(layers: list[Layer] | tuple[Layer, ...]) -> list[dict[str, Any]]:
    """Consecutive layers expanded from one macro use are shown as that macro."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(layers):
        macro = layers[i].macro
        if macro is None:
            out.append(layer_view(layers[i]))
            i += 1
            continue
        j = i
        while j < len(layers) and layers[j].macro == macro:
            j += 1
        out.append({"type": macro, "params": {}, "sublayers": [layer_view(x) for x in layers[i:j]]})
        i = j
    return out


def network_view(n: Network) -> dict[str, Any]:
    if len(n.inputs) == 1 and n.inputs[0].name == "input":
        inputs: Any = list(n.inputs[0].shape)
    else:
        inputs = {i.name: {"type": "Input", "shape": list(i.shape)} for i in n.inputs}
    t = n.training
    training = {
        k: value_view(getattr(t, k))
        for k in ("epochs", "batch_size", "validation_split", "search_method", "shuffle")
        if getattr(t, k) is not None
    }
    return {
        "input": inputs,
        "layers": layers_view(n.layers),
        "loss": n.loss,
        "optimizer": None
        if n.optimizer is None
        else {
            "type": n.optimizer.type,
            "params": {p.name: value_view(p.value) for p in n.optimizer.params},
        },
        "training": training,
        "execution": {"device": n.execution.device},
    }


# ---------------------------------------------------------------- comparison
def same(expected: Any, actual: Any) -> bool:
    """Equal, treating equivalent spellings as one: `3` and `(3, 3)` for a kernel, `null`
    and `{}` for no parameters, device given in params or on the layer."""
    if expected is None and actual in ({}, None):
        return True
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        if isinstance(actual, list) and actual and all(a == expected for a in actual):
            return True
        return not isinstance(actual, bool) and actual == expected
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        if "type" in expected and "sublayers" in actual:  # a layer
            return same_layer(expected, actual)
        return all(k in actual and same(v, actual[k]) for k, v in expected.items()) and (
            set(actual) <= set(expected) or "type" in expected
        )
    return expected == actual


def same_layer(e: dict[str, Any], a: dict[str, Any]) -> bool:
    e_params = dict(e.get("params") or {})
    a_params = dict(a.get("params") or {})
    e_device = e.get("device", e_params.pop("device", None))
    a_params.pop("device", None)
    if e_device != a.get("device"):
        return False
    for key in e:  # CustomShape(MyLayer, (32, 32)) states its values beside `type`
        if key not in ("type", "params", "sublayers", "device", "name"):
            e_params[key] = e[key]
    if "name" in e and e["name"] != a.get("name"):
        return False
    return (
        e["type"] == a["type"]
        and same_params(e_params, a_params)
        and same(e.get("sublayers", []), a.get("sublayers", []))
    )


def same_params(e: dict[str, Any], a: dict[str, Any]) -> bool:
    return set(e) == set(a) and all(same(v, a[k]) for k, v in e.items())


# ---------------------------------------------------------------- running a case
def run_case(case: dict[str, Any]) -> Outcome:
    src, kind = case["source"], case["kind"]
    syntax_only = case.get("check") == "syntax"
    try:
        if kind == "layer":
            if syntax_only:
                parse_raw(src, "layer_start")
                return Outcome(True, None, [], None)
            layers = parse_layer(src, prelude=case.get("prelude", ""))
            return Outcome(True, None, [], {"layers": layers_view(layers)})
        if syntax_only:
            parse_raw(src)
            return Outcome(True, None, [], None)
        if kind == "define":
            name = parse_raw(src).defines[0].name
            layers = parse_layer(name, prelude=src)
            return Outcome(True, None, [], {"layers": layers_view(layers)})
        if kind == "research":
            r = parse(src).research[0]
            meaning = {"name": r.name, "metrics": dict(r.metrics), "references": list(r.references)}
            return Outcome(True, None, [], meaning)
        meaning = network_view(parse(src).networks[0])
        try:
            check(src)  # shapes too: a program whose layers do not fit is rejected
        except DSLError as exc:
            return Outcome(False, exc.stage, [d.message for d in exc.errors], meaning)
        return Outcome(True, None, [], meaning)
    except DSLError as exc:
        return Outcome(False, exc.stage, [d.message for d in exc.errors], None)


def agrees(case: dict[str, Any], out: Outcome) -> dict[str, bool | None]:
    """Per aspect: acceptance (and rejecting stage), meaning, error message. None: not stated."""
    if case["valid"]:
        accept = out.accepted
    else:
        stage = case.get("reject_stage", "any")
        accept = not out.accepted and (
            stage == "any"
            or (stage == "syntax" and out.stage in ("syntax", "limits"))
            or (stage == "semantic" and out.stage in ("semantic", "shape"))
        )
    expect = case.get("expect") or {}
    meaning = None
    structural = {k: v for k, v in expect.items() if k not in ("error", "severity", "warnings")}
    if structural and case["valid"]:  # what we understood, even where shapes then failed
        meaning = out.meaning is not None and all(
            k in out.meaning and same(v, out.meaning[k]) for k, v in structural.items()
        )
    message = None
    if "error" in expect:
        want = expect["error"].lower()
        message = any(want in e.lower() for e in out.errors)
    return {"accept": accept, "meaning": meaning, "message": message}


def load_cases(corpus: Path) -> list[dict[str, Any]]:
    with open(corpus / "cases.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(corpus: Path) -> dict[str, tuple[int, int]]:
    counts: dict[str, list[int]] = {"accept": [0, 0], "meaning": [0, 0], "message": [0, 0]}
    for case in load_cases(corpus):
        for aspect, ok in agrees(case, run_case(case)).items():
            if ok is not None:
                counts[aspect][0] += int(ok)
                counts[aspect][1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


if __name__ == "__main__":
    from tests.conftest import corpus_dir

    path = corpus_dir()
    cases = load_cases(path)
    for case in cases:
        result = agrees(case, out := run_case(case))
        if False in result.values():
            bad = [k for k, v in result.items() if v is False]
            print(f"{case['id']}: disagrees on {', '.join(bad)}: {out.errors[:1] or out.meaning}")
    for aspect, (ok, total) in summary(path).items():
        print(f"{aspect:8s} {ok}/{total}")
    sys.exit(0)
