"""The compatibility corpus: every example parses, every case agrees with its expectation,
except the cases below, where the corpus contradicts itself or where we decided otherwise.

Each decision pins our outcome, so changing one is a visible, reviewed change.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from neural_dsl import DSLError, check
from neural_dsl.syntax import parse_raw

from tests.conftest import corpus_dir
from tests.dsl.corpus_eval import agrees, load_cases, run_case, summary

# id prefix -> (the aspects where we differ from the stated expectation, why)
DECISIONS: dict[str, tuple[set[str], str]] = {
    # --- contradictions inside the corpus
    "068": ({"accept", "meaning"}, "Dropout(1.1): other cases reject rates above 1; so do we"),
    "123": ({"accept"}, "layer names are case-insensitive (173 and 124 accept dense(10), DENSE)"),
    "138": ({"meaning"}, "HPO range keeps start/end/step as case 046 states, not min/max"),
    "171": ({"accept", "meaning"}, "Dense() without units is rejected, as cases 073 and 119 say"),
    "186": ({"meaning"}, "log_range keeps low/high as case 046 states, not min/max"),
    # --- our decisions
    "053": ({"meaning"}, "macro uses are expanded in the IR; the layers remember their macro"),
    "055": ({"meaning"}, "macro uses are expanded in the IR; the layers remember their macro"),
    "109": ({"accept", "meaning"}, "unknown layers are errors: nothing could build them"),
    "128": ({"accept", "meaning"}, "unknown layers are errors: nothing could build them"),
    "127": ({"accept", "meaning"}, "Conv3D kernel ((3,3),3) is not 3 positive integers"),
    "147": ({"accept", "message"}, "Output(20) with categorical_crossentropy is a valid model"),
    "045": ({"accept"}, "shape check: a Conv2D/Dense block inside TransformerEncoder on an image"),
    "187": ({"accept"}, "shape check: the residual block's (26, 26, 128) cannot add to its input"),
    # --- same verdict, our own wording of the message
    "114": ({"message"}, "'LSTM units must be a positive integer, got 0'"),
    "118": ({"message"}, "'MaxPooling2D pool_size should be positive integers, got (0, 0)'"),
    "146": (
        {"accept", "message"},
        "accepted: Dense on the (28, 28, 1) image acts on its last axis, as Keras' Dense does, "
        "and Conv2D takes the (28, 28, 128) result",
    ),
}

CASES = load_cases(corpus_dir())  # in the repository: a missing corpus fails collection


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case_agrees_with_corpus_or_recorded_decision(case: dict) -> None:
    result = agrees(case, run_case(case))
    differs = {aspect for aspect, ok in result.items() if ok is False}
    decided, why = DECISIONS.get(case["id"][:3], (set(), ""))
    assert differs == decided, f"{case['id']}: differs on {differs}, decided {decided} ({why})"


def test_agreement_figures(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = summary(corpus)
    with capsys.disabled():
        print("\ncorpus agreement: " + ", ".join(f"{k} {a}/{t}" for k, (a, t) in figures.items()))
    assert figures["accept"][0] == figures["accept"][1] - sum(
        "accept" in d for d, _ in DECISIONS.values()
    )


# Every example parses. `check` (validate + shapes) then passes, or names the real problem.
EXAMPLE_VERDICTS = {
    "Lambda-sec_Models__MathLang__Newton.neural": "TransformerEncoder expects (steps, features)",
    "Lambda-sec_Models__Transformer__transformer.neural": None,
    "examples__LayersMultiplication+NestedLayers.neural": None,
    "examples__Neural_Networks_From_Scratch_In_Python__three_inputs_neuron.neural": (
        "network 'ThreeInputNeuron' is declared twice"
    ),
    "examples__advanced_hpo_v0.2.5.neural": None,
    "examples__example.neural": None,
    "examples__gpu.neural": None,
    "examples__layer_multiplication.neural": None,
    "examples__macros.neural": None,
    "examples__mnist.neural": None,
    "examples__mnist_2.neural": None,
    "examples__mnist_hpo.neural": None,
    "examples__nested_layers.neural": "TransformerEncoder expects (steps, features)",
    "examples__sentiment.neural": "Embedding expects a sequence of token ids",
    "examples__tiny.neural": None,
    "examples__transformer.neural": "Embedding expects a sequence of token ids",
    "neuralpaper__backend__models__resnet.neural": None,
    "tests__tmp_path__sample.neural": None,
}


def test_every_example_is_listed(corpus: Path) -> None:
    assert sorted(p.name for p in (corpus / "examples").glob("*.neural")) == sorted(
        EXAMPLE_VERDICTS
    )


@pytest.mark.parametrize("name", sorted(EXAMPLE_VERDICTS))
def test_example_parses_and_checks_as_recorded(corpus: Path, name: str) -> None:
    text = (corpus / "examples" / name).read_text(encoding="utf-8")
    parse_raw(text)  # every example is accepted by the grammar
    verdict = EXAMPLE_VERDICTS[name]
    if verdict is None:
        check(text)
        return
    with pytest.raises(DSLError) as info:
        check(text)
    assert info.value.first.message.startswith(verdict)
