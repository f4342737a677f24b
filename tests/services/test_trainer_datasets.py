"""The trainer's datasets: builtin and synthetic data, fitting samples to a network's input,
validation of uploaded .npz/.csv files, and the upload store on real PostgreSQL and SQLite."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from neural.v1 import common_pb2, trainer_pb2
from service_kit import db
from service_kit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)

from services.trainer import dataset_files as files
from services.trainer import datasets as ds
from services.trainer.dataset_store import DatasetStore, to_message
from services.trainer.datasets import Arrays, DatasetError
from services.trainer.tables import metadata

# ---------------------------------------------------------------------------- builtin


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("digits", (1797, 64), 10),
        ("iris", (150, 4), 3),
        ("wine", (178, 13), 3),
        ("breast_cancer", (569, 30), 2),
    ],
)
def test_builtin_datasets_are_float32_and_deterministic(
    name: str, shape: tuple[int, int], classes: int
) -> None:
    a, b = ds.builtin(name), ds.builtin(name)
    assert a.x.shape == shape and a.x.dtype == np.float32
    assert a.y.shape == (shape[0],) and a.y.dtype == np.int64
    assert a.num_classes == classes and set(a.y.tolist()) == set(range(classes))
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    if name == "digits":
        assert a.x.min() == 0.0 and a.x.max() == 1.0
    else:
        np.testing.assert_allclose(a.x.mean(axis=0), 0.0, atol=1e-5)


def test_builtin_digits_is_shuffled_so_a_split_from_the_end_is_learnable() -> None:
    from sklearn.linear_model import RidgeClassifier

    a = ds.builtin("digits")
    cut = int(len(a.y) * 0.8)
    assert set(a.y[cut:].tolist()) == set(range(10))  # not sorted by class
    model = RidgeClassifier().fit(a.x[:cut], a.y[:cut])  # linear, closed form: fast
    assert model.score(a.x[cut:], a.y[cut:]) > 0.9


def test_split_order_validates_on_every_class_of_a_class_sorted_dataset() -> None:
    ids = np.repeat(np.arange(5), 40)  # sorted by class, as a CSV exported per class is
    order = ds.split_order(ids, 50, seed=7)
    assert sorted(order.tolist()) == list(range(200))  # a permutation: no row lost or repeated
    val = ids[order[-50:]]
    assert np.bincount(val, minlength=5).tolist() == [10] * 5  # stratified: each class's share
    np.testing.assert_array_equal(order, ds.split_order(ids, 50, seed=7))  # same seed, same split
    assert not np.array_equal(order, ds.split_order(ids, 50, seed=8))


def test_split_order_shuffles_when_a_class_is_too_small_to_stratify() -> None:
    ids = np.array([0] * 30 + [1] * 30 + [2])  # class 2 has one sample: cannot be on both sides
    order = ds.split_order(ids, 12, seed=1)
    assert sorted(order.tolist()) == list(range(61))
    assert set(ids[order[-12:]].tolist()) >= {0, 1}
    assert ds.split_order(ids, 0, seed=1).tolist() == list(range(61))  # nothing to validate


def test_unknown_builtin_names_the_choices() -> None:
    with pytest.raises(DatasetError, match="digits, iris, wine, breast_cancer"):
        ds.builtin("mnist")


# ---------------------------------------------------------------------------- synthetic


def _nearest_mean_accuracy(a: Arrays) -> float:
    x = a.x.reshape(len(a.x), -1)
    half = len(x) // 2
    means = np.stack([x[:half][a.y[:half] == k].mean(axis=0) for k in range(a.num_classes)])
    guess = ((x[half:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    return float((guess == a.y[half:]).mean())


def test_synthetic_data_is_shaped_deterministic_and_learnable() -> None:
    a = ds.synthetic((8, 8, 1), 2000, 10, seed=7)
    assert a.x.shape == (2000, 8, 8, 1) and a.x.dtype == np.float32
    assert a.y.shape == (2000,) and a.num_classes == 10
    assert set(a.y.tolist()) == set(range(10))
    b = ds.synthetic((8, 8, 1), 2000, 10, seed=7)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(ds.synthetic((8, 8, 1), 2000, 10, seed=8).x, a.x)
    assert _nearest_mean_accuracy(a) > 0.9
    assert _nearest_mean_accuracy(ds.synthetic((16,), 2000, 3, seed=-1)) > 0.9


def test_synthetic_fills_variable_dimensions() -> None:
    a = ds.synthetic((None, 4), 10, 2, seed=0)
    assert a.x.shape == (10, ds.VARIABLE_DIM, 4)


@pytest.mark.parametrize(
    ("shape", "samples", "classes", "message"),
    [
        ((4,), 0, 2, "num_samples"),
        ((4,), 1_000_001, 2, "num_samples"),
        ((4,), 10, 1, "num_classes"),
        ((0, 3), 10, 2, "positive dimensions"),
        ((1000, 1000), 1000, 2, "over the limit"),
    ],
)
def test_synthetic_limits(shape: tuple[int, ...], samples: int, classes: int, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        ds.synthetic(shape, samples, classes, seed=0)


# ---------------------------------------------------------------------------- fit_to_input


def test_fit_to_input_keeps_matching_shapes_and_reshapes_equal_sizes() -> None:
    a = ds.builtin("digits")
    assert ds.fit_to_input(a, (64,), "x") is a
    assert ds.fit_to_input(a, (None,), "x") is a
    img = ds.fit_to_input(a, (8, 8, 1), "x")
    assert img.x.shape == (1797, 8, 8, 1)
    np.testing.assert_array_equal(img.x.reshape(1797, 64), a.x)
    assert ds.fit_to_input(a, (None, 8), "x").x.shape == (1797, 8, 8)


def test_fit_to_input_names_both_shapes_on_mismatch() -> None:
    with pytest.raises(DatasetError) as err:
        ds.fit_to_input(ds.builtin("digits"), (28, 28, 1), "x")
    assert str(err.value) == (
        "dataset samples have shape (64,), but the network's input 'x' expects (28, 28, 1)"
    )
    with pytest.raises(DatasetError, match=r"expects \(None, 7\)"):
        ds.fit_to_input(ds.builtin("digits"), (None, 7), "x")


# ---------------------------------------------------------------------------- files


def _npz(path: Path, **arrays: object) -> Path:
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def test_npz_is_loaded_as_float32_and_int64(tmp_path: Path) -> None:
    x = np.arange(24, dtype=np.int16).reshape(6, 2, 2)
    p = _npz(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 4], dtype=np.uint8))
    assert files.inspect_file(p, "npz") == {"x": (6, 2, 2), "y": (6,)}
    a = files.load_file(p, "npz")
    assert a.x.dtype == np.float32 and a.y.dtype == np.int64 and a.num_classes == 5
    # Whole-number float labels are class ids too.
    p2 = _npz(tmp_path / "f.npz", x=np.ones((2, 3)), y=np.array([1.0, 0.0]))
    assert files.load_file(p2, "npz").y.tolist() == [1, 0]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.ones((3, 2))}, "no array 'y'"),
        ({"x": np.ones((3, 2)), "y": np.zeros(4, dtype=int)}, "x has 3 samples but y has 4"),
        ({"x": np.ones((3, 2)), "y": np.array([0.5, 1, 2])}, "sample 0: label 0.5"),
        ({"x": np.ones((3, 2)), "y": np.array([0, -1, 2])}, "sample 1: label -1 is negative"),
        ({"x": np.ones((3, 2)), "y": np.zeros((3, 1), dtype=int)}, "y must be 1-D"),
        ({"x": np.ones(3), "y": np.zeros(3, dtype=int)}, "x must have shape"),
        ({"x": np.array([[1.0], [np.nan]]), "y": np.zeros(2, dtype=int)}, "sample 1: x holds NaN"),
        ({"x": np.array([[1e300]]), "y": np.zeros(1, dtype=int)}, "too large for float32"),
        ({"x": np.array([["a"]]), "y": np.zeros(1, dtype=int)}, "must be numeric"),
        ({"x": np.ones((1, 1)), "y": np.array([10_000])}, "too large"),
        ({"x": np.ones((0, 2)), "y": np.zeros(0, dtype=int)}, "no samples"),
    ],
)
def test_bad_npz_files_are_refused_with_the_reason(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    p = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        files.inspect_file(p, "npz")


def test_object_arrays_are_refused_and_never_unpickled(tmp_path: Path) -> None:
    p = tmp_path / "evil.npz"
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, dtype=int))
    with pytest.raises(DatasetError, match="Python objects"):
        files.inspect_file(p, "npz")


def test_non_archives_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.npz"
    np.save(plain, np.ones(3))  # a lone .npy, not an archive
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        files.inspect_file(plain, "npz")
    junk = tmp_path / "junk.npz"
    with zipfile.ZipFile(junk, "w") as zf:
        zf.writestr("x.npy", b"not an array")
        zf.writestr("y.npy", b"nor this")
    with pytest.raises(DatasetError, match=r"not a readable \.npy array"):
        files.inspect_file(junk, "npz")


def test_zip_bombs_are_refused_before_decompressing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_NPZ_UNCOMPRESSED_BYTES", 1024**2)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pad.bin", b"\0" * (1024**2 + 1))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(DatasetError, match="unpacks to 1048577 bytes"):
        files.inspect_file(bomb, "npz")


def test_a_header_declaring_a_huge_array_is_refused_before_allocating(tmp_path: Path) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
    )
    p = tmp_path / "huge.npz"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
        zf.writestr("y.npy", b"")
    with pytest.raises(DatasetError, match="over the limit"):
        files.inspect_file(p, "npz")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_features_then_label(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", "\ufeffa,b,label\n1,2.5,0\n\n-3, 4e1 ,2\r\n0,0,1.0\n")
    assert files.inspect_file(p, "csv") == {"x": (3, 2), "y": (3,)}
    a = files.load_file(p, "csv")
    np.testing.assert_array_equal(a.x, np.array([[1, 2.5], [-3, 40], [0, 0]], dtype=np.float32))
    assert a.y.tolist() == [0, 2, 1] and a.num_classes == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b,label\n1,2,0\n1,2\n", "line 3: 2 columns, but the header has 3"),
        ("a,b,label\n1,2,0\n\n1,x,1\n", "line 4, column 'b': 'x' is not a number"),
        ("a,b,label\n1,,0\n", "line 2, column 'b': '' is not a number"),
        ("a,b,label\n1,2,0\n1,nan,1\n", "line 3: x holds NaN"),
        ("a,b,label\n1,2,0.5\n", "line 2: label 0.5 is not a whole number"),
        ("a,b,label\n1,2,0\n1,2,-2\n", "line 3: label -2 is negative"),
        ("1,2,0\n3,4,1\n", "line 1 must be a header"),
        ("label\n0\n", "at least two columns"),
        ("a,label\n", "no samples"),
        ("", "empty"),
    ],
)
def test_bad_csv_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        files.inspect_file(_csv(tmp_path / "bad.csv", text), "csv")


def test_csv_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.csv"
    p.write_bytes(b"a,label\n1,0\n\xe9,1\n")
    with pytest.raises(DatasetError, match="line 3: not UTF-8"):
        files.inspect_file(p, "csv")


def test_large_csv_is_parsed_in_blocks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10_000, 3))
    y = rng.integers(4, size=10_000)
    lines = [
        "f1,f2,f3,y",
        *(",".join([*map(repr, map(float, row)), str(k)]) for row, k in zip(x, y, strict=True)),
    ]
    lines[9000] = "1,2,oops,0"  # line 9001, in the third block
    p = _csv(tmp_path / "big.csv", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 9001, column 'f3'"):
        files.load_file(p, "csv")
    lines[9000] = "1,2,3,0"
    a = files.load_file(_csv(p, "\n".join(lines) + "\n"), "csv")
    assert a.x.shape == (10_000, 3) and a.y[8999] == 0
    np.testing.assert_allclose(a.x[:8999], x[:8999].astype(np.float32))


# ---------------------------------------------------------------------------- uploads


async def _store(url: str, root: Path, max_bytes: int = 1024**2) -> DatasetStore:
    engine = db.make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return DatasetStore(engine, root, max_bytes)


async def _chunks(
    data: bytes,
    name: str,
    size: int = 100,
    sha256: str | None = None,
    total_size: int | None = None,
) -> AsyncIterator[common_pb2.Chunk]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    offset = 0
    for i, piece in enumerate(pieces):
        yield common_pb2.Chunk(
            data=piece,
            offset=offset,
            name=name if i == 0 else "",
            total_size=(len(data) if total_size is None else total_size) if i == 0 else 0,
        )
        offset += len(piece)
    yield common_pb2.Chunk(
        offset=offset, sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    )


def _npz_bytes(n: int = 20) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.ones((n, 8), dtype=np.float32), y=np.arange(n) % 3)
    return buf.getvalue()


def _left_behind(root: Path) -> list[str]:
    return (
        sorted(p.name for p in (root / "datasets").glob("*"))
        if (root / "datasets").exists()
        else []
    )


async def test_upload_keeps_a_checked_file_and_its_row(db_url: str, tmp_path: Path) -> None:
    store = await _store(db_url, tmp_path)
    data = _npz_bytes()
    rec = await store.upload("alice", _chunks(data, "train.npz"))
    assert (rec.name, rec.format, rec.size_bytes, rec.owner) == (
        "train.npz",
        "npz",
        len(data),
        "alice",
    )
    assert rec.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.shapes == {"x": (20, 8), "y": (20,)}
    assert store.path(rec).read_bytes() == data
    assert _left_behind(tmp_path) == [f"{rec.id}.npz"]
    assert await store.get(rec.id, "alice") == rec
    assert await store.get(rec.id, None) == rec  # an admin sees every dataset
    arrays = store.load(rec)
    assert arrays.x.shape == (20, 8) and arrays.num_classes == 3

    msg = to_message(rec)
    assert msg.format == trainer_pb2.DATASET_FORMAT_NPZ
    assert list(msg.shapes["x"].dims) == [20, 8] and msg.create_time.seconds > 0

    csv_rec = await store.upload("alice", _chunks(b"a,b,y\n1,2,0\n3,4,1\n", "Tab le.CSV", size=5))
    assert csv_rec.format == "csv" and csv_rec.shapes == {"x": (2, 2), "y": (2,)}
    page, token = await store.list("alice", 1, "")
    assert [r.id for r in page] == [csv_rec.id] and token
    page, token = await store.list("alice", 1, token)
    assert [r.id for r in page] == [rec.id] and token == ""
    assert [r.id for r in (await store.list("alice", 0, "", "train"))[0]] == [rec.id]
    assert (await store.list("bob", 0, ""))[0] == []
    assert len((await store.list(None, 0, ""))[0]) == 2
    await store.engine.dispose()


async def test_wrong_sha256_leaves_no_file_and_no_row(db_url: str, tmp_path: Path) -> None:
    store = await _store(db_url, tmp_path)
    data = _npz_bytes()
    with pytest.raises(InvalidArgument, match="sha256"):
        await store.upload("alice", _chunks(data, "d.npz", sha256="0" * 64))
    with pytest.raises(InvalidArgument, match="sha256"):
        await store.upload("alice", _chunks(data, "d.npz", sha256=""))
    with pytest.raises(InvalidArgument, match="ended after"):
        await store.upload("alice", _chunks(data, "d.npz", total_size=len(data) + 1))
    assert _left_behind(tmp_path) == []
    assert (await store.list(None, 0, ""))[0] == []
    await store.engine.dispose()


async def test_invalid_content_and_gaps_leave_nothing(db_url: str, tmp_path: Path) -> None:
    store = await _store(db_url, tmp_path)
    with pytest.raises(InvalidArgument, match=r"bad\.csv: line 3: 1 columns"):
        await store.upload("alice", _chunks(b"a,y\n1,0\n1\n", "bad.csv"))

    async def gap() -> AsyncIterator[common_pb2.Chunk]:
        yield common_pb2.Chunk(data=b"abc", offset=0, name="d.csv")
        yield common_pb2.Chunk(data=b"def", offset=4)

    with pytest.raises(InvalidArgument, match="offset 4, expected 3"):
        await store.upload("alice", gap())
    assert _left_behind(tmp_path) == []
    assert (await store.list(None, 0, ""))[0] == []
    await store.engine.dispose()


async def test_oversized_uploads_are_refused_with_nothing_left(db_url: str, tmp_path: Path) -> None:
    store = await _store(db_url, tmp_path, max_bytes=1000)
    data = _npz_bytes(100)
    assert len(data) > 1000
    received = []

    async def counted() -> AsyncIterator[common_pb2.Chunk]:
        async for chunk in _chunks(data, "big.npz", total_size=0):  # size not declared
            received.append(chunk)
            yield chunk

    with pytest.raises(ResourceExhausted):
        await store.upload("alice", counted())
    assert len(received) < len(data) // 100  # refused as soon as it went over
    with pytest.raises(ResourceExhausted):  # declared up front: refused before any data
        await store.upload("alice", _chunks(data, "big.npz"))
    assert _left_behind(tmp_path) == []
    assert (await store.list(None, 0, ""))[0] == []
    await store.engine.dispose()


@pytest.mark.parametrize(
    "name",
    [
        "../x.npz",
        "a/b.csv",
        "a\\b.csv",
        "a.exe",
        "data",
        ".npz",
        "",
        "x\n.csv",
        "a" * 252 + ".csv",
        ".upload-x.csv",
    ],
)
async def test_bad_names_are_refused(name: str, tmp_path: Path) -> None:
    store = await _store(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", tmp_path)
    with pytest.raises(InvalidArgument, match="dataset name"):
        await store.upload("alice", _chunks(b"a,y\n1,0\n", name))
    assert _left_behind(tmp_path) == []
    await store.engine.dispose()


async def test_other_users_datasets_are_not_found_and_in_use_ones_stay(
    db_url: str, tmp_path: Path
) -> None:
    store = await _store(db_url, tmp_path)
    rec = await store.upload("alice", _chunks(_npz_bytes(), "d.npz"))
    with pytest.raises(NotFound):
        await store.get(rec.id, "bob")
    with pytest.raises(NotFound):
        await store.delete(rec.id, "bob", in_use=False)
    with pytest.raises(FailedPrecondition):
        await store.delete(rec.id, "alice", in_use=True)
    assert store.path(rec).exists()
    await store.delete(rec.id, "alice", in_use=False)
    assert not store.path(rec).exists()
    with pytest.raises(NotFound):
        await store.get(rec.id, None)
    with pytest.raises(DatasetError, match="missing"):
        store.load(rec)
    await store.engine.dispose()


async def test_sweep_removes_only_old_temporary_files(tmp_path: Path) -> None:
    store = await _store(f"sqlite+aiosqlite:///{tmp_path / 's.db'}", tmp_path)
    root = tmp_path / "datasets"
    root.mkdir()
    (root / ".upload-old.npz").write_bytes(b"x")
    (root / "kept.npz").write_bytes(b"x")
    assert store.sweep(older_than_s=3600) == 0
    assert store.sweep(older_than_s=-1) == 1
    assert _left_behind(tmp_path) == ["kept.npz"]
    await store.engine.dispose()
