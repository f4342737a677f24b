"""Limits that keep one program from exhausting the process that reads it.

Every limit on the program, when exceeded, is an ordinary diagnostic at the offending token:
never a hang, a RecursionError or a MemoryError. Services pass stricter limits
for untrusted callers (from their NEURAL_* settings); the CLI uses the defaults.

The last three limits are about what a service does with a valid program (export it, train
it on generated data) and are checked by the service before it starts that work.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_source_bytes: int = 1_000_000
    max_nesting_depth: int = 32  # brackets and blocks, counted together
    max_repeat: int = 1_000  # the N of `Layer(...) * N`
    max_layers: int = 10_000  # after macro and repetition expansion
    max_parameters: int = 10_000_000_000  # trainable parameters in one network
    max_hpo_choices: int = 1_000
    max_onnx_bytes: int = 2**31 - 1  # one exported file (protobuf's own ceiling)
    max_training_bytes: int = 1 << 40  # estimated memory of one training: see training_bytes
    max_dataset_values: int = 10_000_000_000  # samples x features of generated data


def training_bytes(parameters: int, activations: int, batch_size: int) -> int:
    """A rough memory estimate, checked against `Limits.max_training_bytes`, of training a
    network in float32: weights, gradients and two optimizer moments (Adam's) per parameter,
    plus every layer's output for a batch (`activations` values per sample), kept for the
    backward pass, and its gradient."""
    return 4 * (4 * parameters + 2 * activations * batch_size)
