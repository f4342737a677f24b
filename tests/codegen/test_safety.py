"""No string from a program reaches generated code unquoted: hostile text is either rejected
by validation or ends up as an inert literal that does exactly what the IR says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from neural_dsl import DSLError, check, parse
from neural_dsl.backends import BACKENDS, compile_network

from tests.dsl.helpers import net

# (layers, extra lines, what the validation diagnostic names): each string is refused by
# validation for the value it smuggles, never reaching a code generator.
HOSTILE = [
    (
        'Flatten()\n    Dense(10, "relu\\"); __import__(\\"os\\").system(\\"touch pwned\\") #")',
        "",
        "Invalid activation function",
    ),
    ("Flatten()\n    Dense(10, 'relu\\nimport os')", "", "Invalid activation function"),
    ('Flatten()\n    Dense(4) @ "cuda:0\\"); import os #"', "", "invalid device"),
    ("Flatten()\n    Dense(4)", 'metrics: ["accuracy\\")\\nimport os"]', "unknown metric"),
    ("Flatten()\n    Dense(4)", 'loss: "mse\\\\"', "Invalid loss function"),
    (
        "Flatten()\n    Dense(4)",
        'optimizer: "Adam(learning_rate=__import__(\\"os\\"))"',
        "unknown learning-rate schedule '__import__'",
    ),
    ("Flatten()\n    Dense(4)", 'execution { device: "cpu\\nimport os" }', "invalid device"),
]


@pytest.mark.parametrize(("layers", "extra", "diagnostic"), HOSTILE)
def test_hostile_strings_are_rejected_by_validation(
    layers: str, extra: str, diagnostic: str
) -> None:
    with pytest.raises(DSLError) as caught:
        check(net(layers, extra=extra))
    (d,) = caught.value.errors
    assert d.stage == "semantic" and diagnostic in d.message and d.line >= 5 and d.column > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layer",
    ["Lambda(\"__import__('os').system('touch pwned')\")", "CustomShape(Evil, (4, 4))"],
)
def test_layers_that_would_carry_code_are_unsupported_everywhere(backend: str, layer: str) -> None:
    network = parse(net(f"Flatten()\n    {layer}")).network
    with pytest.raises(DSLError, match=f"not supported by the {backend} backend"):
        compile_network(network, backend)


# Names are identifiers by the grammar, but may still be Python keywords or shadow the
# generated module's own imports.
NAMES = """
network import {
  input: { self: (4), torch: (4) }
  layers:
    self: { Dense(3) }
    torch: { Dense(3) }
    Concatenate()
    Output(2, "softmax")
  loss: categorical_crossentropy
}
"""


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_keywords_and_shadowing_names_give_working_code(backend: str, tmp_path: Path) -> None:
    result = compile_network(parse(NAMES).network, backend)
    source = result.source or ""
    tree = ast.parse(source)
    called = {
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
    }
    assert not called & {"exec", "eval", "__import__", "compile", "open"}
    namespace: dict = {}
    exec(compile(source, str(tmp_path / "gen.py"), "exec"), namespace)
    model = namespace["build_model"]()
    import numpy as np

    xs = [np.ones((2, 4), "float32"), np.zeros((2, 4), "float32")]
    if backend == "pytorch":
        import torch

        out = model(*[torch.from_numpy(x) for x in xs]).detach().numpy()
    else:
        out = np.asarray(model(xs))
    assert out.shape == (2, 2)


def test_escaped_strings_in_accepted_programs_stay_literal(tmp_path: Path) -> None:
    # Backslashes and quotes that validation accepts (there are none in names, so use the
    # one free-text field that reaches generated code: the network docstring via repr).
    source = compile_network(parse(net("Flatten()\n    Dense(2)")).network, "pytorch").source
    assert source is not None and "'T'" in source
    ast.parse(source)
