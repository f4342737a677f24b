"""Limits that keep one program from exhausting the process that reads it.

Every limit, when exceeded, is an ordinary diagnostic at the offending token:
never a hang, a RecursionError or a MemoryError. Services pass stricter limits
for untrusted callers; the CLI uses the defaults.
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
