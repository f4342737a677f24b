"""Prediction inputs from files: NumPy's .npy, or JSON rows (a list, or {"instances": [...]})."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import NeuralError


def load_array(path: Path) -> np.ndarray:
    """A batch: one row per example (a single example becomes a batch of one)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                if "instances" not in data:
                    raise NeuralError(f"{path}: a JSON object must hold `instances`")
                data = data["instances"]
            array = np.asarray(data)
        else:
            raise NeuralError(f"{path}: the input must be a .npy or .json file")
    except (OSError, ValueError) as exc:
        raise NeuralError(f"{path}: cannot read the input: {exc}") from None
    if array.dtype == object or array.dtype.kind not in "iubf":
        raise NeuralError(f"{path}: the input must be a rectangular array of numbers")
    if array.ndim == 0:
        raise NeuralError(f"{path}: the input must be an array, not a single number")
    return array.reshape(1, -1) if array.ndim == 1 else array
