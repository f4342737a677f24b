"""Training data: scikit-learn's bundled datasets, synthetic data, and uploaded files.

Pure functions over numpy arrays; nothing here knows of gRPC, SQL or the file store. Every
problem with the data is a `DatasetError` whose message is meant for the user.

Limits (one dataset is held in a worker's memory, so they bound memory, not just disk):
- at most `MAX_SAMPLES` samples and `MAX_ELEMENTS` feature values (400 MB as float32);
- at most `MAX_CLASSES` classes (labels are 0 .. num_classes - 1);
- an .npz archive declares at most `MAX_NPZ_UNCOMPRESSED_BYTES` uncompressed and holds at most
  `MAX_NPZ_MEMBERS` entries, checked before anything is decompressed (zip bombs);
- a .csv file has at most `MAX_CSV_COLUMNS` columns, the label included.

File formats:
- npz: `np.savez(path, x=..., y=...)` (compressed or not). `x` has shape (samples, ...) and a
  numeric dtype (bool, int, uint or float); `y` is 1-D, one class id per sample, integer (or
  bool, or float holding whole numbers). Other arrays in the archive are ignored. Object
  arrays are refused: nothing is ever unpickled.
- csv: UTF-8, comma-separated, a header row first (a first row made only of numbers is refused,
  so a missing header cannot silently drop a sample), then one sample per row: numeric feature
  columns and the class id in the last column. Every row has the header's column count; blank
  lines are ignored. Errors name the line (1-based, the header is line 1).
"""

from __future__ import annotations

import csv
import math
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAX_SAMPLES = 1_000_000
MAX_ELEMENTS = 100_000_000
MAX_CLASSES = 10_000
MAX_NPZ_UNCOMPRESSED_BYTES = 1024**3
MAX_NPZ_MEMBERS = 64
MAX_CSV_COLUMNS = 10_000
FORMATS = ("npz", "csv")
BUILTINS = ("digits", "iris", "wine", "breast_cancer")
# A variable (None) dimension of a network's input gets this length in synthetic data.
VARIABLE_DIM = 8

_BUILTIN_SEED = 0  # fixed, so every run of a builtin dataset sees the same split
_NUMERIC_X = "biuf"
_BLOCK_ROWS = 4096  # csv rows converted at once: fast in numpy, little memory
_CHECK_BLOCK = 1 << 20  # elements checked for NaN/inf at once, to bound the temporary mask


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


# ---------------------------------------------------------------------------- files


def inspect_file(path: Path, fmt: str) -> dict[str, tuple[int, ...]]:
    """The shapes of an uploaded file's arrays ({"x": (n, ...), "y": (n,)}) once every rule in
    this module's docstring holds; DatasetError for the first that does not."""
    arrays = load_file(path, fmt)
    return {"x": tuple(arrays.x.shape), "y": tuple(arrays.y.shape)}


def load_file(path: Path, fmt: str) -> Arrays:
    """An uploaded file's data: x as float32, y as int64, num_classes = the largest label + 1."""
    if fmt == "npz":
        return _load_npz(path)
    if fmt == "csv":
        return _load_csv(path)
    raise DatasetError(f"unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}")


def _checked(
    x: np.ndarray, y: np.ndarray, where: Callable[[int], str] = lambda i: f"sample {i}"
) -> Arrays:
    """The rules every file's arrays follow; `where(i)` says where sample i came from."""
    if x.ndim < 2:
        raise DatasetError(f"x must have shape (samples, features...), got {x.shape}")
    if y.ndim != 1:
        raise DatasetError(f"y must be 1-D (one class id per sample), got shape {y.shape}")
    if len(x) != len(y):
        raise DatasetError(f"x has {len(x)} samples but y has {len(y)}: they must match")
    if len(y) == 0:
        raise DatasetError("the dataset has no samples")
    if len(y) > MAX_SAMPLES:
        raise DatasetError(f"the dataset has {len(y)} samples, over the limit of {MAX_SAMPLES}")
    if x.size > MAX_ELEMENTS:
        raise DatasetError(f"x holds {x.size} values, over the limit of {MAX_ELEMENTS}")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{where(i)}: label {float(y[i]):g} is not a whole number (a class id)"
            )
    elif y.dtype.kind not in "biu":
        raise DatasetError(f"y must hold integer class ids, got dtype {y.dtype}")
    negative = np.flatnonzero(y < 0)
    if negative.size:
        i = int(negative[0])
        raise DatasetError(f"{where(i)}: label {float(y[i]):g} is negative; class ids start at 0")
    top = float(y.max())
    if top >= MAX_CLASSES:
        raise DatasetError(
            f"{where(int(y.argmax()))}: label {top:g} is too large; at most "
            f"{MAX_CLASSES} classes (ids 0 to {MAX_CLASSES - 1})"
        )
    # Values beyond float32's range become inf here, so the check below catches them too.
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    flat = x32.reshape(len(x32), -1)
    rows = max(1, _CHECK_BLOCK // max(1, flat.shape[1]))
    for start in range(0, len(flat), rows):
        bad_rows = np.flatnonzero(~np.isfinite(flat[start : start + rows]).all(axis=1))
        if bad_rows.size:
            raise DatasetError(
                f"{where(start + int(bad_rows[0]))}: x holds NaN or infinite values "
                "(or values too large for float32)"
            )
    labels = y.astype(np.int64)
    return Arrays(x32, labels, int(labels.max()) + 1)


def _npz_member(zf: zipfile.ZipFile, key: str) -> tuple[str, tuple[int, ...], np.dtype]:
    """The entry np.load reads for `key`, with its shape and dtype from the .npy header alone."""
    names = zf.namelist()
    member = key if key in names else f"{key}.npy"  # the lookup np.load's NpzFile does
    if member not in names:
        arrays = sorted(n.removesuffix(".npy") for n in names)
        raise DatasetError(
            f"the archive has no array {key!r} (it has: {', '.join(arrays) or 'none'}); "
            "save it with np.savez(path, x=features, y=labels)"
        )
    try:
        with zf.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise DatasetError(f"array {key!r} uses .npy format version {version}")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"array {key!r} is not a readable .npy array: {exc}") from None
    if dtype.hasobject:
        raise DatasetError(
            f"array {key!r} holds Python objects (dtype object); only numeric arrays are "
            "accepted, and pickled data is never loaded"
        )
    if dtype.kind not in _NUMERIC_X or dtype.shape:
        raise DatasetError(f"array {key!r} has dtype {dtype}; it must be numeric")
    if math.prod(shape) > MAX_ELEMENTS:
        raise DatasetError(
            f"array {key!r} has shape {shape}: {math.prod(shape)} values, over the limit of "
            f"{MAX_ELEMENTS}"
        )
    return member, shape, dtype


def _load_npz(path: Path) -> Arrays:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        raise DatasetError(
            "the file is not an .npz archive (a zip of .npy arrays, as np.savez writes)"
        ) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise DatasetError(
                f"the archive has {len(infos)} entries, over the limit of {MAX_NPZ_MEMBERS}"
            )
        declared = sum(i.file_size for i in infos)
        if declared > MAX_NPZ_UNCOMPRESSED_BYTES:
            raise DatasetError(
                f"the archive unpacks to {declared} bytes, over the limit of "
                f"{MAX_NPZ_UNCOMPRESSED_BYTES}"
            )
        x_member, _, _ = _npz_member(zf, "x")
        y_member, _, _ = _npz_member(zf, "y")
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz[x_member]
            y = npz[y_member]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"the archive could not be read: {exc}") from None
    return _checked(x, y)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _decoded_lines(f: BinaryIO) -> Iterator[str]:
    """The file's lines as text, decoded one at a time so a bad byte is blamed on its line."""
    for number, raw in enumerate(f, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"line {number}: not UTF-8 text (byte {exc.start + 1} of the line)"
            ) from None
        yield text.removeprefix("\ufeff") if number == 1 else text


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) of each non-blank row."""
    with path.open("rb") as f:
        reader = csv.reader(_decoded_lines(f))
        try:
            for row in reader:
                if row:
                    yield reader.line_num, row
        except csv.Error as exc:
            raise DatasetError(f"line {reader.line_num}: {exc}") from None


def _load_csv(path: Path) -> Arrays:
    blocks: list[np.ndarray] = []
    lines: list[int] = []  # the file line of each sample, for error messages
    pending: list[list[str]] = []
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise DatasetError("the file is empty: it needs a header row and at least one sample")
    header = first[1]
    if len(header) < 2:
        raise DatasetError(
            f"line {first[0]}: the header needs at least two columns (features, then the label)"
        )
    if len(header) > MAX_CSV_COLUMNS:
        raise DatasetError(
            f"line {first[0]}: {len(header)} columns, over the limit of {MAX_CSV_COLUMNS}"
        )
    if all(_is_number(c) for c in header):
        raise DatasetError(
            f"line {first[0]} must be a header of column names, but it holds only numbers"
        )

    def flush() -> None:
        try:
            blocks.append(np.array(pending, dtype=np.float64))
        except ValueError as exc:
            start = len(lines) - len(pending)
            for k, row in enumerate(pending):
                for j, cell in enumerate(row):
                    if not _is_number(cell):
                        raise DatasetError(
                            f"line {lines[start + k]}, column {header[j]!r}: {cell!r} is not "
                            "a number"
                        ) from None
            raise DatasetError(f"lines {lines[start]} to {lines[-1]}: {exc}") from None
        pending.clear()

    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f"line {line}: {len(row)} columns, but the header has {len(header)}")
        if len(lines) >= MAX_SAMPLES:
            raise DatasetError(f"line {line}: more than {MAX_SAMPLES} samples, over the limit")
        if (len(lines) + 1) * (len(header) - 1) > MAX_ELEMENTS:
            raise DatasetError(f"line {line}: over the limit of {MAX_ELEMENTS} feature values")
        pending.append(row)
        lines.append(line)
        if len(pending) >= _BLOCK_ROWS:
            flush()
    if pending:
        flush()
    if not lines:
        raise DatasetError("the file has a header but no samples")
    data = np.concatenate(blocks)
    line_of = np.asarray(lines, dtype=np.int64)
    return _checked(data[:, :-1], data[:, -1], lambda i: f"line {line_of[i]}")
