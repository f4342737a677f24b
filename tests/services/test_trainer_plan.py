"""The trainer's pure parts: request checks, search spaces, and which failures are retried."""

from __future__ import annotations

import grpc
import optuna
import pytest
import redis
from neural_dsl import DSLError, Limits, parse
from sqlalchemy.exc import OperationalError

from services.trainer import plan, search
from services.trainer.datasets import DatasetError
from services.trainer.plan import TrainingRequest
from services.trainer.runner import infrastructure

DIGITS = """
network Digits {
  input: (8, 8, 1)
  layers:
    Flatten()
    Dense(HPO(choice(16, 32)), "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: Adam(learning_rate=HPO(log_range(0.001, 0.1)))
  train { epochs: HPO(range(1, 3)) }
}
"""
HP = {"layers.dense_1.units": 16, "optimizer.learning_rate": 0.01, "train.epochs": 2}


def network():  # type: ignore[no-untyped-def]
    return parse(DIGITS).network


def test_data_of_the_same_size_is_reshaped_to_the_input() -> None:
    resolved = plan.check_fit(network(), "pytorch", HP, (64,), 10)
    assert resolved.layers[1].get("units") == 16


def test_a_wrong_input_shape_or_class_count_is_the_callers_mistake() -> None:
    with pytest.raises(DatasetError, match=r"expects \(8, 8, 1\)"):
        plan.check_fit(network(), "pytorch", HP, (28, 28, 1), 10)
    with pytest.raises(DatasetError, match="3 classes"):
        plan.check_fit(network(), "pytorch", HP, (64,), 3)
    # an uploaded dataset's classes are checked once it is loaded
    plan.check_fit(network(), "pytorch", HP, (64,), 0)


def test_missing_hyperparameters_are_named() -> None:
    with pytest.raises(DSLError, match=r"layers\.dense_1\.units"):
        plan.check_fit(network(), "pytorch", {}, (64,), 10)


def test_a_program_with_several_networks_needs_a_name() -> None:
    two = DIGITS + DIGITS.replace("network Digits", "network Other")
    with pytest.raises(DatasetError, match="several networks"):
        plan.network_of(two, "", Limits())
    assert plan.network_of(two, "Other", Limits()).name == "Other"
    with pytest.raises(DatasetError, match="no network 'Nope'"):
        plan.network_of(two, "Nope", Limits())


def test_the_request_survives_its_json_round_trip() -> None:
    req = TrainingRequest(source=DIGITS, backend="pytorch", dataset={"builtin": "digits"})
    req.hparams = HP
    again = TrainingRequest.from_json(req.to_json() | {"unknown_later_field": 1})
    assert again == req and again.dataset_label() == "digits"


def test_search_spaces_become_optuna_distributions() -> None:
    spaces = {h.name: h for h in network().hpo_params()}
    units = search.distribution(spaces["layers.dense_1.units"])
    rate = search.distribution(spaces["optimizer.learning_rate"])
    epochs = search.distribution(spaces["train.epochs"])
    assert isinstance(units, optuna.distributions.CategoricalDistribution)
    assert units.choices == (16, 32)
    assert isinstance(rate, optuna.distributions.FloatDistribution) and rate.log
    assert isinstance(epochs, optuna.distributions.IntDistribution)
    assert (epochs.low, epochs.high, epochs.step) == (1, 3, 1)


def test_tuple_choices_are_sampled_by_position() -> None:
    net = parse(DIGITS.replace("Flatten()", "Reshape(HPO(choice((64,), (8, 8))))")).network
    h = next(h for h in net.hpo_params() if h.name.startswith("layers.reshape"))
    assert search.distribution(h).choices == (0, 1)
    assert search.value_of(h, 1) == (8, 8)


class _Rpc(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, None, None, details="x")


def test_only_infrastructure_failures_are_retried() -> None:
    assert infrastructure(_Rpc(grpc.StatusCode.UNAVAILABLE))
    assert infrastructure(redis.ConnectionError("down"))
    assert infrastructure(OperationalError("select 1", {}, Exception("gone")))
    assert infrastructure(OSError("disk full"))
    assert not infrastructure(_Rpc(grpc.StatusCode.INVALID_ARGUMENT))
    assert not infrastructure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not infrastructure(ValueError("bad"))
