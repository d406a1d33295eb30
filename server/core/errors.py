"""The serving core's one error type, with a code every front end maps to its own status.

The codes are the canonical status codes gRPC and Google APIs share (the names tlserve's
contract documents for each error); a gRPC front end maps them one to one, an HTTP front
end to 400, 404, 429, 503, 504 and so on, each through one helper of its own.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """What went wrong, independent of the wire protocol."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    """The request breaks a limit or is malformed; the message names the field or limit."""
    NOT_FOUND = "NOT_FOUND"
    """No such model or version (or an invalid model name)."""
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    """The model's queue is full; retry later."""
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    """The caller's deadline passed before its texts were classified; the work was dropped."""
    UNAVAILABLE = "UNAVAILABLE"
    """Still loading, or shutting down; retry (on another replica)."""
    INTERNAL = "INTERNAL"
    """A fault inside the server (a model that failed at inference)."""


class ServingError(Exception):
    """A failed call: its `ErrorCode` and a message naming the field or limit."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def too_many_texts(where: str, count: int, limit: int) -> ServingError:
    """The refusal of a request of `count` texts over max_texts_per_request, told before any text is read."""
    return ServingError(ErrorCode.INVALID_ARGUMENT,
                        f"{where} holds {count} texts; the limit is max_texts_per_request={limit} (tlserve's "
                        "clients split long lists themselves)")
