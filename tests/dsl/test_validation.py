"""Semantic validation: each mistake is reported at its token, with a useful message."""

from __future__ import annotations

import pytest
from neural_dsl import DSLError, parse, parse_layer
from neural_dsl.ir import HPO, Choice, LogRange, Range, Schedule

from tests.dsl.helpers import first_error, net


def test_unknown_layer_suggests_the_closest_name() -> None:
    err = first_error(net("Flatten()\n    Dence(10)"))
    d = err.first
    assert "unknown layer 'Dence'" in d.message and "did you mean 'Dense'" in d.message
    assert (d.line, d.column) == (5, 5)


def test_unknown_parameter_suggests_the_closest_name() -> None:
    d = first_error(net('Conv2D(32, (3,3), activaton="relu")')).first
    assert d.message == "Conv2D has no parameter 'activaton' (did you mean 'activation'?)"
    assert (d.line, d.column) == (4, 23)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("Dense(units=-1)", "Dense units must be a positive integer, got -1"),
        ('Dense(units="abc")', "Dense units must be a number (a positive integer), got string"),
        ("Dense(3.5)", "Dense units must be an integer, got 3.5"),
        ("Dropout(1.0)", "Dropout rate should be between 0 and 1 (0 <= rate < 1), got 1.0"),
        ("Dropout(-0.1)", "Dropout rate should be between 0 and 1"),
        ("Conv2D(32, (0, 0))", "Conv2D kernel_size should be positive integers, got (0, 0)"),
        ("Conv2D(32, (3, 3, 3))", "Conv2D kernel_size needs 2 values, got 3"),
        ('Conv2D(32, 3, padding="full")', "Conv2D padding must be one of valid, same"),
        ("BatchNormalization(momentum=2)", "BatchNormalization momentum must be between 0 and 1"),
        ('Dense(10, "relux")', "Invalid activation function 'relux' (did you mean 'relu'?)"),
        ("LSTM(return_sequences=true)", "LSTM requires 'units' parameter"),
        ("LSTM(8, return_sequences=1)", "LSTM return_sequences must be true or false, got 1"),
        ("Dense(10, units=5)", "Dense got 'units' twice"),
        ('Dense(10, "relu", true)', "Dense takes at most 2 positional arguments"),
        ("Dense(units=10, 5)", "Dense: positional argument after a named one"),
        ("Flatten() { Dense(2) }", "Flatten takes no block of sublayers"),
        ("Lambda(123)", "Lambda function must be a string, got 123"),
        ('TimeDistributed(Dropout("x"))', "Dropout rate must be a number"),
        ('Dense(8) @ "npu"', "invalid device 'npu'"),
        ("Dense(8) * 0", "repetition count must be a positive integer, got 0"),
        ("Dense(HPO(range(1, 0.5)))", "range start must be below its end"),
        ("Dense(HPO(range(8.5, 64)))", "Dense units is an integer: its range needs integer"),
        ("Dense(HPO(log_range(8, 64)))", "use range or choice, not log_range"),
        ("Dense(HPO(choice(8, -1)))", "Dense units must be a positive integer, got -1"),
        ("Dense(HPO(uniform(1, 2)))", "unknown search space 'uniform'"),
        ("Dense(max(1, 2))", "unexpected call max(...) where a value was expected"),
    ],
)
def test_bad_layer_values_are_reported(layer: str, message: str) -> None:
    with pytest.raises(DSLError) as info:
        parse_layer(layer)
    assert message in info.value.first.message, info.value.first.message
    assert info.value.first.stage == "semantic"


def test_every_error_in_a_program_is_reported_with_its_position() -> None:
    text = net('Dense(-1)\n    Dropout(2)\n    Dense(4, "nope")')
    err = first_error(text)
    assert [(d.line, d.column) for d in err.errors] == [(4, 11), (5, 13), (6, 14)]


def test_integral_float_becomes_an_int_with_a_warning() -> None:
    from neural_dsl import parse_with_warnings

    program, warnings = parse_with_warnings(net("Flatten()\n    Dense(256.0)"))
    assert program.network.layers[1].get("units") == 256
    assert isinstance(program.network.layers[1].get("units"), int)
    assert [w.message for w in warnings] == ["Implicit conversion of 256.0 to integer 256"]


def test_positional_arguments_map_as_users_expect() -> None:
    (conv,) = parse_layer('Conv2D(32, (3,3), "relu", strides=2)')
    assert {p.name: p.value for p in conv.params} == {
        "filters": 32,
        "kernel_size": (3, 3),
        "activation": "relu",
        "strides": (2, 2),
    }
    (pool,) = parse_layer('MaxPooling2D((3, 3), 2, "valid")')
    assert pool.get("strides") == (2, 2) and pool.get("padding") == "valid"
    (out,) = parse_layer('Output(10, "softmax")')
    assert (out.get("units"), out.get("activation")) == (10, "softmax")


def test_macros_expand_with_repetition_into_distinct_layers() -> None:
    text = 'define Block {\n  Conv2D(8, (3,3), padding="same")\n  BatchNormalization()\n}\n' + net(
        "Block * 2\n    Block()"
    )
    layers = parse(text).network.layers
    assert [x.name for x in layers] == [
        "conv2d_1",
        "batch_normalization_1",
        "conv2d_2",
        "batch_normalization_2",
        "conv2d_3",
        "batch_normalization_3",
    ]
    assert {x.macro for x in layers} == {"Block"}


def test_undefined_macro_is_reported_at_its_use() -> None:
    d = first_error(net("Flatten()\n    UndefinedMacro()")).first
    assert d.message.startswith("Undefined macro or unknown layer 'UndefinedMacro'")
    assert (d.line, d.column) == (5, 5)


def test_recursive_macros_are_reported_with_the_cycle() -> None:
    text = "define A {\n  B\n}\ndefine B {\n  Dense(2)\n  A\n}\n" + net("Flatten()\n    A")
    messages = [d.message for d in first_error(text).errors]
    assert any("recursive macro 'A' (A -> B -> A)" in m for m in messages), messages


def test_macro_errors_are_reported_once_even_when_used_twice() -> None:
    text = "define A {\n  Dense(-3)\n}\n" + net("Flatten()\n    A\n    A")
    assert len(first_error(text).errors) == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('loss: "invalid_loss"', "Invalid loss function 'invalid_loss'"),
        ('loss: "categorical_crossentropie"', "(did you mean 'categorical_crossentropy'?)"),
        ('optimizer: "invalid_optimizer"', "Invalid optimizer 'invalid_optimizer'"),
        ("optimizer: Adam(learnig_rate=0.1)", "Adam has no parameter 'learnig_rate'"),
        ("optimizer: SGD(momentum=1.5)", "SGD momentum must be between 0 and 1, got 1.5"),
        ("optimizer: Adam(learning_rate=Decay(1))", "unknown learning-rate schedule 'Decay'"),
        ("optimizer: Adam(learning_rate=ExponentialDecay(0.1))", "ExponentialDecay requires"),
        ("train { epochs: -10 }", "Training parameters must be positive: epochs"),
        ("train { validation_split: 1.5 }", "validation_split must be between 0 and 1, got 1.5"),
        ("train { epoch: 3 }", "unknown train setting 'epoch' (did you mean 'epochs'?)"),
        ('train { search_method: "genetic" }', "train search_method must be one of"),
        ('execution { device: "quantum" }', "invalid device 'quantum'"),
    ],
)
def test_bad_network_settings_are_reported(extra: str, message: str) -> None:
    err = first_error(net("Flatten()\n    Dense(2)", extra=extra))
    assert any(message in d.message for d in err.errors), [d.message for d in err.errors]


def test_optimizer_written_as_a_string_is_understood() -> None:
    text = net("Flatten()", extra='optimizer: "Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))"')
    opt = parse(text).network.optimizer
    assert opt is not None and opt.type == "Adam"
    lr = opt.get("learning_rate")
    assert isinstance(lr, HPO) and lr.space == LogRange(1e-4, 1e-2)
    assert lr.name == "optimizer.learning_rate"


def test_schedule_with_hpo_values() -> None:
    text = net(
        "Flatten()",
        extra="optimizer: SGD(learning_rate=ExponentialDecay(HPO(range(0.05, 0.2, step=0.05)),"
        " 1000, HPO(range(0.9, 0.99, step=0.01))), momentum=0.9)",
    )
    opt = parse(text).network.optimizer
    assert opt is not None and opt.type == "SGD" and opt.get("momentum") == 0.9
    sched = opt.get("learning_rate")
    assert isinstance(sched, Schedule) and sched.type == "ExponentialDecay"
    assert sched.get("decay_steps") == 1000
    assert sched.get("initial_learning_rate").space == Range(0.05, 0.2, 0.05)


def test_hpo_parameters_are_named_for_later_search() -> None:
    text = net(
        "Flatten()\n    Dense(HPO(choice(64, 128)))\n    Dropout(HPO(range(0.1, 0.5, step=0.1)))",
        extra="optimizer: Adam(learning_rate=HPO(log_range(1e-4, 1e-2)))\n"
        "  train { batch_size: HPO(choice(16, 32)) }",
    )
    network = parse(text).network
    assert [h.name for h in network.hpo_params()] == [
        "layers.dense_1.units",
        "layers.dropout_1.rate",
        "optimizer.learning_rate",
        "train.batch_size",
    ]
    assert network.hpo_params()[0].space == Choice((64, 128))


def test_hparams_errors_name_the_space_and_no_command_line_flag() -> None:
    from neural_dsl.hparams import resolve

    network = parse(
        net(
            'Flatten()\n    Dense(HPO(choice(16, 32)), activation=HPO(choice("relu", "tanh")))',
            extra="optimizer: Adam(learning_rate=HPO(range(0.001, 0.1)))",
        )
    ).network
    _, missing = resolve(network, {"layers.dense_1.units": 16, "optimizer.learning_rate": 0.01})
    (d,) = missing.items
    assert d.message == (
        "no value for hyperparameter 'layers.dense_1.activation': give one in hparams under "
        'this name, from its search space choice("relu", "tanh")'
    )
    values = {"layers.dense_1.units": 16, "layers.dense_1.activation": "relu"}
    _, outside = resolve(network, values | {"optimizer.learning_rate": 0.5})
    (d,) = outside.items
    assert d.message == (
        "value 0.5 for 'optimizer.learning_rate' is outside its search space range(0.001, 0.1)"
    )


def test_network_structure_rules() -> None:
    missing = "network M {\n  layers: Dense(2)\n}"
    assert first_error(missing).first.message == "Network must have an input section"
    dup = "network M {\n  input: (3)\n  input: (4)\n  layers: Dense(2)\n}"
    d = first_error(dup).first
    assert d.message == "Duplicate input section" and d.line == 3
    empty = "network M {\n  input: (3)\n  layers:\n  loss: mse\n}"
    assert first_error(empty).first.message == "Layers section cannot be empty"
    bad_dims = "network M {\n  input: (0, -1)\n  layers: Dense(2)\n}"
    assert first_error(bad_dims).first.message.startswith("Input dimensions must be positive")


def test_section_keywords_still_work_as_names_inside_blocks() -> None:
    program = parse(
        "research R {\n  metrics {\n    accuracy: 0.9\n    loss: 0.1\n  }\n"
        '  references {\n    paper: "A"\n  }\n}'
    )
    assert program.research[0].metrics == (("accuracy", 0.9), ("loss", 0.1))


def test_wrappers_hold_their_inner_layer() -> None:
    (td,) = parse_layer('TimeDistributed(Dense(128, "relu"), dropout=0.5) { Dropout(0.2) }')
    assert td.wrapped is not None and td.wrapped.type == "Dense"
    assert td.get("dropout") == 0.5 and [s.type for s in td.sublayers] == ["Dropout"]
    with pytest.raises(DSLError, match="cannot wrap 'Add'"):
        parse_layer("TimeDistributed(Add())")


def test_devices_are_validated_and_normalised() -> None:
    (layer,) = parse_layer('Dense(8) @ "CUDA:1"')
    assert layer.device == "cuda:1"
    for ok in ("cpu", "gpu", "tpu:0", "mps", "auto"):
        assert parse_layer(f'Dense(8) @ "{ok}"')[0].device == ok
