"""The client's one error type: what went wrong, as the gRPC code and the server's message."""

from __future__ import annotations

import grpc


class NeuralError(Exception):
    """A failed call (`code` is its gRPC status) or a client-side mistake (`code` is None)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def unreachable(self) -> bool:
        """The platform (or the service behind the gateway) could not be reached."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

    def __str__(self) -> str:
        return self.message if self.code is None else f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> NeuralError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(details or (code.name if code else str(exc)), code)


MISSING_KEY = (
    "NEURAL_API_KEY is not set: create a key with `neural-keys create --name me --role admin` "
    "and export it"
)


class MissingKeyError(NeuralError):
    """No API key given and none in NEURAL_API_KEY."""

    def __init__(self) -> None:
        super().__init__(MISSING_KEY)
