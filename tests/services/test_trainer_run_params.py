"""A training run's tracker params say everything needed to reproduce the run and use its
model: network, optimizer and rate, loss, batch size, epochs, the data and its preprocessing,
and the seed of the validation split."""

from __future__ import annotations

from neural_dsl import parse

from services.trainer.plan import TrainingRequest
from services.trainer.run_params import run_params
from services.trainer.training import resolve_spec

SOURCE = """
network Digits {
  input: (64)
  layers:
    Dense(HPO(choice(16, 32)), "relu")
    Output(10, "softmax")
  loss: sparse_categorical_crossentropy
  optimizer: SGD(learning_rate=0.05, momentum=0.9)
  train { epochs: 4 batch_size: 16 validation_split: 0.25 }
}
"""


def params_of(source: str, dataset: dict, **overrides: object) -> dict[str, str]:
    network = parse(source).network
    hparams = {"layers.dense_1.units": 32} if "HPO" in source else {}
    spec = resolve_spec(network, "pytorch", hparams=hparams, **overrides)  # type: ignore[arg-type]
    req = TrainingRequest(source=source, backend="pytorch", dataset=dataset, model_id="m1")
    return run_params(req, network, spec, "job-1", hparams)


def test_a_run_records_network_optimizer_loss_schedule_data_and_seed() -> None:
    params = params_of(SOURCE, {"builtin": "digits"})
    assert params == {
        "network": "Digits",
        "backend": "pytorch",
        "loss": "sparse_categorical_crossentropy",
        "optimizer": "SGD",
        "learning_rate": "0.05",
        "optimizer.momentum": "0.9",
        "epochs": "4",
        "batch_size": "16",
        "validation_split": "0.25",
        "seed": "0",
        "split": "stratified shuffle",
        "dataset": "digits",
        "dataset.preprocessing": "pixel intensities divided by 16 (0..16 -> 0..1)",
        "job_id": "job-1",
        "model_id": "m1",
        "hparams.layers.dense_1.units": "32",
    }


def test_the_recorded_rate_is_the_one_trained_with() -> None:
    overridden = params_of(SOURCE, {"builtin": "iris"}, learning_rate=0.2, seed=11)
    assert overridden["learning_rate"] == "0.2" and overridden["seed"] == "11"
    assert overridden["dataset.preprocessing"] == "each feature standardized to mean 0, std 1"
    plain = SOURCE.replace("SGD(learning_rate=0.05, momentum=0.9)", "Adam")
    assert params_of(plain, {"dataset_id": "d1"})["learning_rate"] == "0.001"  # Keras' default
    schedule = SOURCE.replace("0.05", "ExponentialDecay(0.1, 1000, 0.96)")
    recorded = params_of(schedule, {"dataset_id": "d1"})
    assert recorded["learning_rate"].startswith("ExponentialDecay(")
    assert "0.1" in recorded["learning_rate"]
    assert recorded["dataset.preprocessing"] == "none (features as uploaded)"
