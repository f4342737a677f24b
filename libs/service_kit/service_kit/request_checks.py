"""What every request is checked for at the door, whatever its RPC, before a handler sees it.

- No string holds a NUL character. PostgreSQL's text cannot store one (the insert fails deep
  inside a handler, or a worker retries a job that can never succeed), and no name, id, key,
  filter or program needs one; SQLite would take it, so both databases refuse it alike.
- Every enum holds a number its proto defines. proto3 lets any number through, and a handler
  that looks a value up with a default would quietly treat `backend = 99` as "unspecified".

The walk is planned once per message type and visits only the fields that can hold a string or
an enum (a Timestamp or a metric's value is never read). A batch of a thousand metrics costs
about 0.2 ms: the Python objects the walk builds for its messages are handed back, for the
caller to hold while the handler runs, so that the handler reading the same messages reuses
them rather than building them again. The first problem is reported, with the field's path
("metrics[3].key", "tags['team']") in the google.rpc.BadRequest violation.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from functools import cache
from operator import attrgetter
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .errors import FieldViolation, InvalidArgument, shown

# What a google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
TIMESTAMP_RANGE = "between 0001-01-01 and 9999-12-31, with nanos from 0 to 999999999"

_TEXT = FieldDescriptor.TYPE_STRING
_ENUM = FieldDescriptor.TYPE_ENUM
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


@dataclass(frozen=True)
class _Value:
    """What one value of a field is: text, an enum (with its numbers) or a message to walk."""

    kind: int
    enum_name: str = ""
    numbers: frozenset[int] = frozenset()
    message: Descriptor | None = None


@dataclass(frozen=True)
class _Field:
    name: str
    value: _Value
    repeated: bool
    map_key_text: bool = False
    is_map: bool = False


def _value(field: FieldDescriptor) -> _Value:
    if field.type == _ENUM:
        numbers = frozenset(v.number for v in field.enum_type.values)
        return _Value(_ENUM, field.enum_type.name, numbers)
    if field.type == _MESSAGE:
        return _Value(_MESSAGE, message=field.message_type)
    return _Value(field.type)


def _holds_checked(desc: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a message of this type can hold a string or an enum anywhere inside."""
    if desc.full_name in seen:
        return False  # a cycle (Struct -> Value -> ListValue -> Value): judged by its other fields
    for field in desc.fields:
        if field.type in (_TEXT, _ENUM):
            return True
        if field.type == _MESSAGE and _holds_checked(field.message_type, seen | {desc.full_name}):
            return True
    return False


@cache
def _plan(desc: Descriptor) -> tuple[_Field, ...]:
    fields = []
    for field in desc.fields:
        if field.type == _MESSAGE and field.message_type.GetOptions().map_entry:
            key = field.message_type.fields_by_name["key"]
            value = field.message_type.fields_by_name["value"]
            if key.type == _TEXT or _relevant(value):
                fields.append(_Field(field.name, _value(value), True, key.type == _TEXT, True))
        elif _relevant(field):
            fields.append(_Field(field.name, _value(field), field.is_repeated))
    return tuple(fields)


def _relevant(field: FieldDescriptor) -> bool:
    if field.type in (_TEXT, _ENUM):
        return True
    return field.type == _MESSAGE and _holds_checked(field.message_type)


@cache
def _flat_text(desc: Descriptor) -> bool:
    """Whether every checked field of this message type is a single string."""
    return all(f.value.kind == _TEXT and not f.repeated for f in _plan(desc))


def _nul(path: str) -> FieldViolation:
    return FieldViolation(path, "holds a NUL character (\\x00), which no field accepts")


def _one(value: Any, spec: _Value, path: str) -> FieldViolation | None:
    if spec.kind == _TEXT:
        return _nul(path) if "\x00" in value else None
    if spec.kind == _ENUM:
        if value in spec.numbers:
            return None
        return FieldViolation(path, f"{value} is not a value of {spec.enum_name}")
    if spec.kind == _MESSAGE:
        return find_problem(value, f"{path}.")
    return None


def _many(values: Any, spec: _Value, path: str, keep: list[Any]) -> FieldViolation | None:
    if spec.kind == _TEXT:
        # one scan over all of them; the index is looked for only when there is a NUL
        if "\x00" not in "".join(values):
            return None
    elif spec.kind == _ENUM:
        if spec.numbers.issuperset(values):
            return None
    elif spec.kind == _MESSAGE and _flat_text(spec.message):
        # e.g. a batch of metrics: their keys in one scan, not a walk per metric
        items = list(values)
        keep.append(items)
        if not any("\x00" in "".join(map(attrgetter(f.name), items)) for f in _plan(spec.message)):
            return None
    for i, value in enumerate(values):
        problem = _one(value, spec, f"{path}[{i}]")
        if problem:
            return problem
    return None


def find_problem(
    message: Any, prefix: str = "", keep: list[Any] | None = None
) -> FieldViolation | None:
    """The first string with a NUL or enum out of range in `message`, as a field violation.
    `keep` collects the message objects built on the way (see the module's doc)."""
    keep = [] if keep is None else keep
    for field in _plan(message.DESCRIPTOR):
        path = prefix + field.name
        if field.is_map:
            container = getattr(message, field.name)
            if not container:
                continue
            for key in container:
                where = f"{path}[{shown(key, 40)}]" if isinstance(key, str) else f"{path}[{key}]"
                if field.map_key_text and "\x00" in key:
                    return _nul(f"{path} (a key)")
                problem = _one(container[key], field.value, where)
                if problem:
                    return problem
        elif field.repeated:
            values = getattr(message, field.name)
            if values:
                problem = _many(values, field.value, path, keep)
                if problem:
                    return problem
        elif field.value.kind == _MESSAGE:
            if message.HasField(field.name):
                problem = _one(getattr(message, field.name), field.value, path)
                if problem:
                    return problem
        else:
            problem = _one(getattr(message, field.name), field.value, path)
            if problem:
                return problem
    return None


def check(message: Any, where: str = "") -> list[Any]:
    """INVALID_ARGUMENT naming the field, when `message` holds a NUL or an unknown enum value;
    otherwise the objects to hold while the handler reads `message`. `where` says which
    message of a stream it was."""
    keep: list[Any] = []
    problem = find_problem(message, "", keep)
    if problem is not None:
        raise InvalidArgument(f"{problem.field}{where}: {problem.description}", [problem])
    return keep


def datetime_of(ts: Any, field: str) -> dt.datetime:
    """A request's google.protobuf.Timestamp as an aware UTC datetime, or INVALID_ARGUMENT
    naming `field` when it holds a moment no Timestamp may (e.g. seconds = 2**62)."""
    low, high = TIMESTAMP_SECONDS
    if not (low <= ts.seconds <= high and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgument(
            f"{field} must be {TIMESTAMP_RANGE}",
            [FieldViolation(field, f"outside the Timestamp range (seconds {ts.seconds})")],
        )
    return ts.ToDatetime(dt.UTC)


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinity in a google.protobuf.Value, or None."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return None if math.isfinite(value.number_value) else path
    if kind == "struct_value":
        for key, item in value.struct_value.fields.items():
            found = _non_finite(item, f"{path}.{key}")
            if found:
                return found
    elif kind == "list_value":
        for i, item in enumerate(value.list_value.values):
            found = _non_finite(item, f"{path}[{i}]")
            if found:
                return found
    return None


def struct_values(struct: Any, field: str) -> dict[str, Any]:
    """A request's google.protobuf.Struct as plain Python values, or INVALID_ARGUMENT naming
    the entry that holds a NaN or an infinity: JSON has no such number (the Struct cannot be
    stored or sent on), and no setting means one."""
    for key, item in struct.fields.items():
        found = _non_finite(item, f"{field}.{key}")
        if found:
            raise InvalidArgument(
                f"{found[:200]} is not a finite number",
                [FieldViolation(found[:200], "NaN and infinities are not allowed")],
            )
    return json_format.MessageToDict(struct)
