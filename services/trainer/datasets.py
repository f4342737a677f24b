"""Training data: scikit-learn's bundled datasets, synthetic data, fitting samples to a
network's input, and the validation split. Uploaded files are parsed by `dataset_files`.

Pure functions over numpy arrays; nothing here knows of gRPC, SQL or the file store. Every
problem with the data is a `DatasetError` whose message is meant for the user.

Limits (one dataset is held in a worker's memory, so they bound memory, not just disk):
- at most `MAX_SAMPLES` samples and `MAX_ELEMENTS` feature values (400 MB as float32);
- at most `MAX_CLASSES` classes (labels are 0 .. num_classes - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_SAMPLES = 1_000_000
MAX_ELEMENTS = 100_000_000
MAX_CLASSES = 10_000
BUILTINS = ("digits", "iris", "wine", "breast_cancer")
# A variable (None) dimension of a network's input gets this length in synthetic data.
VARIABLE_DIM = 8

_BUILTIN_SEED = 0  # fixed, so every run of a builtin dataset sees the same split


class DatasetError(ValueError):
    """Data that cannot feed the network; the message is meant for the user."""


@dataclass(frozen=True)
class Arrays:
    """A classification dataset: `x` of shape (n, *sample_shape), `y` class ids of shape (n,)."""

    x: np.ndarray
    y: np.ndarray
    num_classes: int


def _shape_text(shape: Sequence[int | None]) -> str:
    return str(tuple(shape))


def _shuffled(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(y))
    return x[order], y[order]


def split_order(ids: np.ndarray, n_val: int, seed: int) -> np.ndarray:
    """Row order for a validation split: the training rows first, the `n_val` validation
    rows last (the loop validates on the end, Keras' rule). Rows are shuffled with `seed` and,
    when every class has at least two samples and each side can hold one of every class, the
    split is stratified, so a file sorted by class still validates on every class. The same
    ids, size and seed give the same order."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(ids))
    if n_val <= 0:
        return rows
    # scikit-learn takes 32-bit seeds; any seed up to 2**63 maps onto one deterministically
    state = int(np.random.SeedSequence(seed).generate_state(1)[0])
    classes, counts = np.unique(ids, return_counts=True)
    n_train = len(ids) - n_val
    stratify = counts.min() >= 2 and min(n_val, n_train) >= len(classes)
    train, val = train_test_split(
        rows, test_size=n_val, random_state=state, stratify=ids if stratify else None
    )
    return np.concatenate([train, val])


# ---------------------------------------------------------------------------- builtin
# What `builtin` does to each dataset's features, as a run's params record it.
PREPROCESSING = {
    "digits": "pixel intensities divided by 16 (0..16 -> 0..1)",
    "iris": "each feature standardized to mean 0, std 1",
    "wine": "each feature standardized to mean 0, std 1",
    "breast_cancer": "each feature standardized to mean 0, std 1",
}


def builtin(name: str) -> Arrays:
    """One of scikit-learn's bundled datasets (no download), ready to train on.

    digits: (1797, 64) pixel intensities scaled from 0..16 to 0..1, 10 classes;
    iris (150, 4, 3 classes), wine (178, 13, 3 classes), breast_cancer (569, 30, 2 classes):
    each feature standardized to mean 0 and standard deviation 1 (over the whole dataset: these
    are teaching datasets, and the small leak into a validation split is not worth a second
    pass). Samples are shuffled with a fixed seed, so the same name gives the same arrays and a
    validation split taken from the end holds every class."""
    from sklearn import datasets as sk

    loaders = {
        "digits": sk.load_digits,
        "iris": sk.load_iris,
        "wine": sk.load_wine,
        "breast_cancer": sk.load_breast_cancer,
    }
    if name not in loaders:
        raise DatasetError(f"unknown builtin dataset {name!r}: choose one of {', '.join(BUILTINS)}")
    x, y = loaders[name](return_X_y=True)
    x = np.asarray(x, dtype=np.float64)
    if name == "digits":
        x = x / 16.0
    else:
        std = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    x, y = _shuffled(x.astype(np.float32), np.asarray(y, dtype=np.int64), _BUILTIN_SEED)
    return Arrays(x, y, int(y.max()) + 1)


# ---------------------------------------------------------------------------- synthetic


def synthetic(
    sample_shape: Sequence[int | None], num_samples: int, num_classes: int, seed: int
) -> Arrays:
    """Learnable random data shaped like one network input: for smoke tests and benchmarks.

    Each class has a random prototype; a sample is a prototype plus Gaussian noise, and its label
    is the prototype it lies nearest to. Labels are thus a function of x whose class boundaries
    are linear (a Voronoi partition), so even a single Dense layer can reach high accuracy.
    Features are float32 with roughly unit variance. The same arguments give the same arrays
    (any int64 seed, negative ones included). A None (variable) dimension gets VARIABLE_DIM.
    Limits: 1 <= num_samples <= MAX_SAMPLES, 2 <= num_classes <= MAX_CLASSES, and
    num_samples * prod(sample_shape) <= MAX_ELEMENTS."""
    shape = tuple(VARIABLE_DIM if d is None else d for d in sample_shape)
    if any(not isinstance(d, int | np.integer) or d < 1 for d in shape):
        raise DatasetError(
            f"synthetic data needs positive dimensions, got {_shape_text(sample_shape)}"
        )
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise DatasetError(f"num_samples must be between 1 and {MAX_SAMPLES}, got {num_samples}")
    if not 2 <= num_classes <= MAX_CLASSES:
        raise DatasetError(f"num_classes must be between 2 and {MAX_CLASSES}, got {num_classes}")
    features = math.prod(shape)
    if num_samples * features > MAX_ELEMENTS:
        raise DatasetError(
            f"{num_samples} samples of shape {_shape_text(shape)} are "
            f"{num_samples * features} values, over the limit of {MAX_ELEMENTS}"
        )
    rng = np.random.default_rng(int(seed) % 2**64)
    prototypes = rng.standard_normal((num_classes, features), dtype=np.float32)
    y = rng.integers(num_classes, size=num_samples, dtype=np.int64)
    x = prototypes[y]
    # Noise and the nearest prototype, argmin |x - p|^2 = argmax (x.p - |p|^2 / 2), in blocks
    # so the temporaries (noise, the samples-by-classes scores) stay small.
    half_norms = 0.5 * np.einsum("ij,ij->i", prototypes, prototypes)
    block = max(1, (1 << 22) // max(num_classes, features))
    for start in range(0, num_samples, block):
        part = x[start : start + block]
        part += 0.5 * rng.standard_normal(part.shape, dtype=np.float32)
        y[start : start + block] = (part @ prototypes.T - half_norms).argmax(axis=1)
    return Arrays(x.reshape((num_samples, *shape)), y, num_classes)


# ---------------------------------------------------------------------------- fitting


def fit_to_input(arrays: Arrays, sample_shape: Sequence[int | None], input_name: str) -> Arrays:
    """`arrays` with samples of the network input's shape (a None dimension matches any size).

    Samples already of that shape come back as they are; samples with the same number of
    values are reshaped (digits' 64 features -> (8, 8, 1)); with one None dimension it takes
    what the others leave, when they divide the sample's size. Anything else is a DatasetError
    naming both shapes."""
    have = tuple(arrays.x.shape[1:])
    want = tuple(sample_shape)
    if len(have) == len(want) and all(w is None or w == h for h, w in zip(have, want, strict=True)):
        return arrays
    size = math.prod(have)
    known = math.prod(d for d in want if d is not None)
    unknown = sum(d is None for d in want)
    if (unknown == 0 and known == size) or (unknown == 1 and known > 0 and size % known == 0):
        target = tuple(-1 if d is None else d for d in want)
        return Arrays(arrays.x.reshape((len(arrays.x), *target)), arrays.y, arrays.num_classes)
    raise DatasetError(
        f"dataset samples have shape {_shape_text(have)}, but the network's input "
        f"{input_name!r} expects {_shape_text(want)}"
    )
