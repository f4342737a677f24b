"""Errors a handler raises; the error interceptor turns each into its gRPC status.

Anything else a handler raises is a bug: INTERNAL, logged with its traceback, and the
caller learns nothing of the inside."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

SHOWN_CHARS = 64  # of a caller's id or name echoed in an error message


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """A caller's id, name or key quoted for an error message, cut to `limit` characters: a
    10,000-character id must not make a 10,000-character status (gRPC carries the message in
    a trailer, which has a size limit of its own)."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


@dataclass
class ServiceError(Exception):
    message: str
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __post_init__(self) -> None:
        super().__init__(self.message)


@dataclass
class FieldViolation:
    field: str
    description: str


class InvalidArgument(ServiceError):
    """A caller's mistake, with a google.rpc.BadRequest violation per problem."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message, grpc.StatusCode.INVALID_ARGUMENT)
        self.violations = violations or []


class NotFound(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.NOT_FOUND)


class AlreadyExists(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.ALREADY_EXISTS)


class FailedPrecondition(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.FAILED_PRECONDITION)


class Unauthenticated(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.UNAUTHENTICATED)


class PermissionDenied(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.PERMISSION_DENIED)


class ResourceExhausted(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.RESOURCE_EXHAUSTED)


class Unavailable(ServiceError):
    def __init__(self, message: str) -> None:
        super().__init__(message, grpc.StatusCode.UNAVAILABLE)


def program_invalid(exc: Any) -> InvalidArgument:
    """A Neural DSL program's errors (a neural_dsl.DSLError) as INVALID_ARGUMENT, with one
    BadRequest violation per diagnostic and the first one's line:column in the message."""
    first = exc.first
    return InvalidArgument(
        f"{first.line}:{first.column}: {first.message}",
        [
            FieldViolation(f"source:{d.line}:{d.column}", f"{d.stage}: {d.message}")
            for d in exc.errors
        ],
    )
