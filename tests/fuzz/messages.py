"""Hypothesis strategies for any protobuf message, built from its descriptor.

Half the requests are hostile: any field may be empty, huge, a negative or extreme number,
text with a NUL or other control characters, NaN or an infinity, an enum number the proto
does not define, a timestamp outside what a datetime can hold. The other half are plausible
(printable text, defined enums, finite numbers, real moments), so that calls get past the
checks at the door into the code behind them. A field whose name has known-good values
(`pools`, e.g. the id of a run that exists) draws them often, in both halves; a pool may
hold messages of a message field's type (drawn beside generated ones), or be a strategy, which
is then the field's only one (e.g. to keep the values a server accepts small).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = descriptor.FieldDescriptor
Pools = Mapping[str, Sequence[Any] | st.SearchStrategy[Any]]
Pool = Sequence[Any] | st.SearchStrategy[Any]

MAX_DEPTH = 3
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
# What a google.protobuf.Timestamp may hold (years 1 to 9999), and just outside it.
TS_MIN, TS_MAX = -62_135_596_800, 253_402_300_799
HUGE_TEXT = ("a" * 10_000, "x" * 256, "é" * 300, "\U0001f600" * 100)
PLAIN = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))


def _with_nul(text: str, at: int) -> str:
    at = min(at, len(text))
    return text[:at] + "\x00" + text[at:]


def _weighted(
    known: Sequence[Any], *others: st.SearchStrategy[Any], weight: int = 3
) -> st.SearchStrategy[Any]:
    """one_of draws each branch about as often: repeating the known values weighs them."""
    if not known:
        return st.one_of(*others)
    return st.one_of(*([st.sampled_from(list(known))] * weight), *others)


def text_values(pool: Sequence[str], hostile: bool) -> st.SearchStrategy[str]:
    plain = st.text(PLAIN, max_size=30)
    if not hostile:
        return _weighted(pool, st.just(""), plain)
    known = [st.builds(_with_nul, st.sampled_from(list(pool)), st.integers(0, 40))] if pool else []
    return _weighted(
        pool,
        st.just(""),
        plain,
        st.text(max_size=20),
        st.builds(_with_nul, st.text(max_size=10), st.integers(0, 10)),
        st.sampled_from(HUGE_TEXT),
        *known,
        weight=2,
    )


def integers(low: int, high: int, hostile: bool) -> st.SearchStrategy[int]:
    if not hostile:
        return st.integers(max(low, -10), min(high, 10_000))
    edges = [v for v in (0, -1, 1, 50, 1000, 1001, 10**6, 2**31 - 1, 2**62) if low <= v <= high]
    return st.one_of(st.sampled_from([low, high, *edges]), st.integers(low, high))


def doubles(width: int, hostile: bool) -> st.SearchStrategy[float]:
    if not hostile:
        return st.floats(-1e6, 1e6, width=width)
    extremes = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 5e-324]
    if width == 64:
        extremes += [1.7e308, -1.7e308]
    return st.one_of(st.sampled_from(extremes), st.floats(width=width))


def _scalar(field: FD, pool: Sequence[Any], hostile: bool) -> st.SearchStrategy[Any]:
    t = field.type
    if t == FD.TYPE_STRING:
        return text_values(pool, hostile)
    if t == FD.TYPE_BYTES:
        if not hostile:
            return st.binary(max_size=64)
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 100_000))
    if t == FD.TYPE_BOOL:
        return st.booleans()
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return _weighted(pool, doubles(64 if t == FD.TYPE_DOUBLE else 32, hostile), weight=1)
    if t == FD.TYPE_ENUM:
        defined = st.sampled_from([v.number for v in field.enum_type.values])
        if not hostile:
            return defined
        return st.one_of(defined, defined, st.integers(-3, 100), st.just(INT32[1]))
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        base = integers(*INT32, hostile)
    elif t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        base = integers(0, 2**32 - 1, hostile)
    elif t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        base = integers(0, 2**64 - 1, hostile)
    else:
        base = integers(*INT64, hostile)
    return _weighted(pool, base, weight=2)


def _timestamp(cls: type[Message], hostile: bool) -> st.SearchStrategy[Message]:
    seconds: st.SearchStrategy[int] = st.integers(0, 2**31)
    nanos: st.SearchStrategy[int] = st.integers(0, 999_999_999)
    if hostile:
        seconds = st.one_of(
            st.integers(TS_MIN, TS_MAX),
            st.sampled_from([0, -1, TS_MIN - 1, TS_MAX + 1, 2**62, -(2**62), *INT64]),
        )
        nanos = st.one_of(nanos, st.sampled_from([-1, 10**9, INT32[1]]))
    return st.builds(lambda s, n: cls(seconds=s, nanos=n), seconds, nanos)


def _struct(cls: type[Message], hostile: bool) -> st.SearchStrategy[Message]:
    text = text_values((), hostile)
    leaf = st.one_of(st.none(), st.booleans(), doubles(64, hostile), text)
    values = st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)
        ),
        max_leaves=8,
    )

    def build(data: dict[str, Any]) -> Message:
        out = cls()
        out.update(data)
        return out

    return st.dictionaries(text, values, max_size=4).map(build)


def requests(desc: descriptor.Descriptor, pools: Pools) -> st.SearchStrategy[Message]:
    """Messages of `desc`'s type: plausible or hostile, half and half."""
    return st.one_of(Generator(pools, False).message(desc), Generator(pools, True).message(desc))


class Generator:
    """Strategies for the messages of one descriptor pool, with pools of known-good values."""

    def __init__(self, pools: Pools | None = None, hostile: bool = True) -> None:
        self.pools = pools or {}
        self.hostile = hostile
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def message(self, desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        key = (desc.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(desc, depth)
        return self._cache[key]

    def _build(self, desc: descriptor.Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(desc)
        if desc.full_name == "google.protobuf.Timestamp":
            return _timestamp(cls, self.hostile)
        if desc.full_name == "google.protobuf.Struct":
            return _struct(cls, self.hostile)
        if depth >= MAX_DEPTH:
            return st.just(cls())
        plain: dict[str, st.SearchStrategy[Any]] = {}
        choices: list[st.SearchStrategy[dict[str, Any]]] = []
        for oneof in desc.oneofs:
            if len(oneof.fields) == 1 and oneof.name.startswith("_"):
                continue  # proto3 `optional`: a field that is set or not, like the others
            members = [
                st.builds(lambda v, n=f.name: {n: v}, self._field(f, depth)) for f in oneof.fields
            ]
            choices.append(st.one_of(st.just({}), *members))
        for field in desc.fields:
            if field.containing_oneof is not None and not field.containing_oneof.name.startswith(
                "_"
            ):
                continue
            plain[field.name] = self._field(field, depth)
        parts = st.tuples(st.fixed_dictionaries({}, optional=plain), *choices)
        return parts.map(lambda ds: _fill(cls(), {k: v for d in ds for k, v in d.items()}))

    def _field(self, field: FD, depth: int) -> st.SearchStrategy[Any]:
        pool = self._pool(field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f = field.message_type.fields_by_name["key"]
            value_f = field.message_type.fields_by_name["value"]
            texts = key_f.type == FD.TYPE_STRING and not isinstance(pool, st.SearchStrategy)
            keys = _scalar(key_f, pool if texts else (), self.hostile)
            values = self._single(value_f, depth + 1, pool)
            small = st.dictionaries(keys, values, max_size=3)
            # many entries only at the top, so a message stays far below the size limit
            if depth or not self.hostile:
                return small
            return st.one_of(small, st.dictionaries(keys, values, min_size=40, max_size=60))
        one = self._single(field, depth + 1, pool)
        if field.is_repeated:
            if depth or not self.hostile:
                return st.lists(one, max_size=3)
            return st.one_of(st.lists(one, max_size=3), st.lists(one, min_size=40, max_size=60))
        return one

    def _single(self, field: FD, depth: int, pool: Pool) -> st.SearchStrategy[Any]:
        if isinstance(pool, st.SearchStrategy):
            return pool
        if field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.FieldMask":
                cls = message_factory.GetMessageClass(field.message_type)
                paths = st.lists(text_values(self._pool("paths"), self.hostile), max_size=3)
                return paths.map(lambda p: cls(paths=p))
            # a pool of the field's own messages (another field's pool may share its name)
            known = [
                m
                for m in pool
                if isinstance(m, Message) and m.DESCRIPTOR.full_name == field.message_type.full_name
            ]
            return _weighted(known, self.message(field.message_type, depth), weight=1)
        return _scalar(field, pool, self.hostile)

    def _pool(self, name: str) -> Pool:
        if name in self.pools:
            return self.pools[name]
        singular = name[:-1] if name.endswith("s") else name
        if singular in self.pools:
            return self.pools[singular]
        if name.endswith(("_id", "_ids")) or name == "id":
            return self.pools.get("id", ())
        return ()


def _fill(msg: Message, values: dict[str, Any]) -> Message:
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields[name]
        target = getattr(msg, name) if field.message_type is not None else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            is_message = field.message_type.fields_by_name["value"].message_type is not None
            for k, v in value.items():
                if is_message:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg
