"""Uploaded dataset files: their format rules, checked before anything is trusted.

Pure functions over files and numpy arrays; nothing here knows of gRPC, SQL or the file store.
Every problem with a file is a `datasets.DatasetError` whose message is meant for the user.

Limits (one dataset is held in a worker's memory, so they bound memory, not just disk):
- the dataset limits of `datasets` (`MAX_SAMPLES`, `MAX_ELEMENTS`, `MAX_CLASSES`);
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .datasets import MAX_CLASSES, MAX_ELEMENTS, MAX_SAMPLES, Arrays, DatasetError

MAX_NPZ_UNCOMPRESSED_BYTES = 1024**3
MAX_NPZ_MEMBERS = 64
MAX_CSV_COLUMNS = 10_000
FORMATS = ("npz", "csv")

_NUMERIC_X = "biuf"
_BLOCK_ROWS = 4096  # csv rows converted at once: fast in numpy, little memory
_CHECK_BLOCK = 1 << 20  # elements checked for NaN/inf at once, to bound the temporary mask


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
