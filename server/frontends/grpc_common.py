"""What the gRPC front ends share: tolerant request parsing, deadlines, and the one error mapping.

Every servicer method that can fail is wrapped in `grpc_errors`, which turns the serving
core's `ServingError` into the gRPC status of the same name (and a malformed request into
INVALID_ARGUMENT); no servicer repeats an except block of its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from tlserve.server.core.errors import ErrorCode, ServingError

_LOGGER = logging.getLogger(__name__)

STATUS: dict[ErrorCode, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.value) for code in ErrorCode}
"""The gRPC status of each serving error code (the same names)."""


def status_of(error: ServingError) -> grpc.StatusCode:
    return STATUS[error.code]


class MalformedRequest:
    """Stands in for a request whose bytes do not parse, so it gets INVALID_ARGUMENT, not UNKNOWN."""

    def __init__(self, message: str) -> None:
        self.message = message

    def error(self) -> ServingError:
        return ServingError(ErrorCode.INVALID_ARGUMENT, self.message)


def _tolerant_parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}")

    return parse


Handler = Callable[..., Any]
Response = TypeVar("Response")


def grpc_errors(method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]
                ) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Wraps a unary servicer method: malformed requests and ServingErrors end as gRPC statuses."""

    @functools.wraps(method)
    async def wrapped(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            if isinstance(request, MalformedRequest):
                raise request.error()
            return await method(self, request, context)
        except ServingError as exc:
            await context.abort(status_of(exc), exc.message)
            raise  # abort raises; this keeps type checkers content

    return wrapped


def _serialize(response: Message | bytes) -> bytes:
    # The native hot path hands over bytes it encoded itself (tlserve.server.frontends.wire).
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_tolerant_service(server: grpc.aio.Server, service: str,
                         methods: dict[str, tuple[Handler, type[Message], type[Message]]],
                         streams: dict[str, tuple[Handler, type[Message], type[Message]]] | None = None) -> None:
    """Registers a service like the generated helpers do, but with parsers that never raise."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(method, _tolerant_parser(request), _serialize)
        for name, (method, request, _) in methods.items()
    }
    for name, (method, request, _) in (streams or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(method, _tolerant_parser(request), _serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata as a dict (text values), e.g. for a caller's ``traceparent``."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as the event loop's time, or None."""
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining
