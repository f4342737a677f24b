"""The IR: immutable, and its versioned JSON form round-trips exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from neural_dsl import IR_VERSION, IRFormatError, ir_dumps, ir_loads, parse
from neural_dsl.ir import program_to_json
from neural_dsl.syntax import parse_raw

from tests.dsl.helpers import net

RICH = 'define Block {\n  Conv2D(8, (3,3), padding="same") @ "cuda:0"\n}\n' + net(
    'Block * 2\n    ResidualConnection { Conv2D(8, 3, padding="same") }\n'
    "    TimeDistributed(Dense(4), dropout=0.1)\n    Flatten()\n"
    "    Dense(HPO(choice(HPO(range(8, 32, step=8)), 64)),"
    ' activation=HPO(choice("relu", "tanh")))\n'
    '    Dropout(HPO(range(0.1, 0.5, step=0.1)))\n    Output(10, "softmax")',
    input_shape="(None, 28, 28, 1)",
    extra="loss: sparse_categorical_crossentropy\n"
    "  optimizer: SGD(learning_rate=ExponentialDecay(0.1, 1000, 0.96), momentum=0.9)\n"
    '  metrics: ["accuracy"]\n'
    "  train { epochs: 3 batch_size: HPO(choice(16, 32)) validation_split: 0.2 }\n"
    '  execution { device: "cpu" }',
)


def examples(corpus: Path) -> list[str]:
    texts = []
    for p in sorted((corpus / "examples").glob("*.neural")):
        text = p.read_text(encoding="utf-8")
        try:
            parse(text)
        except Exception:
            continue
        texts.append(text)
    return texts


def test_round_trip_of_a_program_using_every_construct() -> None:
    program = parse(RICH)
    again = ir_loads(ir_dumps(program))
    assert again == program
    assert ir_dumps(again) == ir_dumps(program)  # locations survive too


def test_round_trip_of_every_valid_corpus_example(corpus: Path) -> None:
    texts = examples(corpus)
    assert len(texts) >= 12
    for text in texts:
        program = parse(text)
        assert ir_loads(ir_dumps(program)) == program
        assert ir_dumps(ir_loads(ir_dumps(program))) == ir_dumps(program)


def test_ir_is_immutable() -> None:
    layer = parse(RICH).network.layers[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.type = "Dense"  # type: ignore[misc]


def test_json_form_is_versioned_and_stable() -> None:
    doc = program_to_json(parse(RICH))
    assert doc["ir_version"] == IR_VERSION == 1
    layer = doc["networks"][0]["layers"][0]
    assert layer == {
        "type": "Conv2D",
        "name": "conv2d_1",
        "params": [
            {"name": "filters", "value": 8, "loc": [2, 10]},
            {"name": "kernel_size", "value": [3, 3], "loc": [2, 13]},
            {"name": "padding", "value": "same", "loc": [2, 28]},
        ],
        "loc": [2, 3],
        "device": "cuda:0",
        "macro": "Block",
    }
    dense = doc["networks"][0]["layers"][5]["params"][0]["value"]
    assert dense["hpo"]["type"] == "choice" and dense["name"] == "layers.dense_2.units"
    assert dense["hpo"]["values"][0]["hpo"] == {"type": "range", "start": 8, "end": 32, "step": 8}


def test_nothing_downstream_needs_the_text() -> None:
    """The IR alone carries what the source said (no source text is stored in it)."""
    doc = json.loads(ir_dumps(parse(RICH)))
    assert "source" not in json.dumps(doc)


@pytest.mark.parametrize(
    "doc",
    [
        "[]",
        "not json",
        '{"ir_version": 2, "networks": []}',
        '{"ir_version": 1, "networks": [{"name": "x"}]}',
        '{"ir_version": 1, "networks": [], "research": [{"loc": "here"}]}',
    ],
)
def test_bad_documents_are_rejected(doc: str) -> None:
    with pytest.raises(IRFormatError):
        ir_loads(doc)


def test_two_networks_in_one_file_are_both_kept() -> None:
    text = net("Flatten()") + net("Flatten()").replace("network T", "network U")
    program = parse(text)
    assert [n.name for n in program.networks] == ["T", "U"]
    assert program.get("U").name == "U"
    with pytest.raises(ValueError, match="2 networks"):
        _ = program.network


def test_raw_syntax_keeps_positions() -> None:
    raw = parse_raw('network N {\n  input: (3)\n  layers:\n    Dense(2) @ "cpu" * 2\n}')
    layer = raw.networks[0].sections[1].payload[0]
    assert (layer.loc.line, layer.loc.column) == (4, 5)
    assert layer.devices[0][0] == "cpu" and layer.repeats[0][0].value == 2
