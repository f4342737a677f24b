"""Two rules of the service kit that every service uses: owner scoping ("admins see
everything") and receiving a chunked upload."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from neural.v1 import common_pb2
from service_kit import chunked_upload, owners
from service_kit.auth import Principal
from service_kit.errors import InvalidArgument, ResourceExhausted
from service_kit.interceptors import current_principal
from sqlalchemy import Column, MetaData, String, Table, select

pytestmark = pytest.mark.unit

rows = Table("t", MetaData(), Column("id", String), Column("owner", String))


# ---------------------------------------------------------------- owner scoping
def test_an_admin_sees_everything_and_anyone_else_only_their_own() -> None:
    token = current_principal.set(Principal("root", "admin"))
    try:
        assert owners.scope() is None
    finally:
        current_principal.reset(token)
    for role in ("viewer", "user"):
        token = current_principal.set(Principal("alice", role))
        try:
            assert owners.scope() == "alice"
        finally:
            current_principal.reset(token)
    assert owners.visible("alice", None) and owners.visible("alice", "alice")
    assert not owners.visible("bob", "alice")
    query = select(rows)
    assert owners.restrict(query, rows.c.owner, None) is query
    limited = str(owners.restrict(query, rows.c.owner, "alice"))
    assert "WHERE t.owner = :owner_1" in limited


# ---------------------------------------------------------------- chunked uploads
def chunks(
    data: bytes, size: int = 4, sha256: str | None = None, total: int | None = None
) -> list[common_pb2.Chunk]:
    out, offset = [], 0
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        out.append(common_pb2.Chunk(data=piece, offset=offset))
        offset += len(piece)
    out = out or [common_pb2.Chunk()]
    out[0].total_size = len(data) if total is None else total
    digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
    out.append(common_pb2.Chunk(offset=offset, sha256=digest))
    return out


async def stream(items: list[common_pb2.Chunk]) -> AsyncIterator[common_pb2.Chunk]:
    for item in items:
        yield item


async def receive(
    folder: Path, items: list[common_pb2.Chunk], max_bytes: int = 1000, **options: object
) -> tuple[int, str]:
    target = folder / "kept.bin"
    async with chunked_upload.receive(
        items[0], stream(items[1:]), folder, max_bytes, what="the file", **options
    ) as received:
        assert received.path.parent == folder
        assert received.path.name.startswith(chunked_upload.TEMP_PREFIX)
        assert not target.exists()  # nothing visible under its name before the rename
        received.publish(target)
    return received.size, received.sha256


def left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_checked_upload_is_renamed_into_place(tmp_path: Path) -> None:
    data = b"hello, chunked world"
    size, digest = await receive(tmp_path, chunks(data))
    assert (size, digest) == (len(data), hashlib.sha256(data).hexdigest())
    assert (tmp_path / "kept.bin").read_bytes() == data
    assert left(tmp_path) == ["kept.bin"]
    upper = tmp_path / "upper"  # upper-case hex is the same digest
    upper.mkdir()
    await receive(upper, chunks(data, sha256=hashlib.sha256(data).hexdigest().upper()))


@pytest.mark.parametrize(
    ("items", "field", "message"),
    [
        (chunks(b"abcdefgh", sha256=""), "chunk.sha256", "64 hex digits"),
        (chunks(b"abcdefgh", sha256="0" * 64), "chunk.sha256", "does not match"),
        (chunks(b"abcdefgh", sha256="xyz"), "chunk.sha256", "64 hex digits"),
        (chunks(b"abcdefgh", total=9), "chunk.total_size", "ended after 8 of 9"),
        (chunks(b"abcdefgh", total=5), "chunk.total_size", "more data than the declared 5"),
        (chunks(b"abcdefgh", total=-1), "chunk.total_size", "negative"),
        (chunks(b""), "chunk.data", "empty"),
    ],
)
async def test_mistakes_are_invalid_and_leave_nothing(
    tmp_path: Path, items: list[common_pb2.Chunk], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        await receive(tmp_path, items, field_prefix="chunk.")
    assert [v.field for v in info.value.violations] == [field]
    assert left(tmp_path) == []


@pytest.mark.parametrize("where", ["gap", "overlap", "sha256 chunk", "data after sha256"])
async def test_offsets_must_follow_on(tmp_path: Path, where: str) -> None:
    items = chunks(b"abcdefghij")
    if where == "gap":
        items[1].offset += 1
    elif where == "overlap":
        items[2].offset -= 1
    elif where == "sha256 chunk":
        items[-1].offset = 0  # the last chunk too starts where the data ended
    else:
        items.append(common_pb2.Chunk(data=b"k", offset=10))
    with pytest.raises(InvalidArgument) as info:
        await receive(tmp_path, items)
    assert info.value.violations[0].field in ("offset", "sha256")
    assert left(tmp_path) == []


async def test_an_empty_file_may_be_allowed(tmp_path: Path) -> None:
    assert await receive(tmp_path, chunks(b""), allow_empty=True) == (
        0,
        hashlib.sha256(b"").hexdigest(),
    )


async def test_over_the_limit_is_resource_exhausted_at_once(tmp_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match="over the limit of 10"):
        await receive(tmp_path, chunks(b"x" * 11), max_bytes=10)  # declared up front
    sent: list[common_pb2.Chunk] = []
    items = chunks(b"x" * 100, total=0)  # not declared: refused once over

    async def counted() -> AsyncIterator[common_pb2.Chunk]:
        for item in items[1:]:
            sent.append(item)
            yield item

    with pytest.raises(ResourceExhausted):
        async with chunked_upload.receive(items[0], counted(), tmp_path, 10):
            pass
    assert len(sent) == 2  # 4 + 4 + 4 bytes: the third chunk went over
    assert left(tmp_path) == []


async def test_a_check_of_the_caller_removes_the_temporary_file(tmp_path: Path) -> None:
    items = chunks(b"abc")
    with pytest.raises(RuntimeError):
        async with chunked_upload.receive(items[0], stream(items[1:]), tmp_path, 100):
            raise RuntimeError("the content is not what the caller accepts")
    assert left(tmp_path) == []
