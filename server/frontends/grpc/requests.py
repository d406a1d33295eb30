"""Request messages off the wire, parsed by a parser that never raises: bytes that are not the method's
message become a `MalformedRequest`, which the servicer answers with INVALID_ARGUMENT naming the
message type (gRPC's own parser failure would end the call with an unexplained UNKNOWN)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError, Message

from tlserve.server.core.errors import ErrorCode, ServingError


class MalformedRequest:
    """Stands in for a request whose bytes do not parse."""

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> ServingError:
        return ServingError(ErrorCode.INVALID_ARGUMENT, self.message)


def tolerant_parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}")

    return parse
