"""What the gRPC front ends share: service registration, call metadata, and the one error mapping.

Every servicer method that can fail is wrapped in `grpc_errors`, which turns the serving
core's `ServingError` into the gRPC status of the same name (and a malformed request into
INVALID_ARGUMENT); no servicer repeats an except block of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.frontends.grpc.requests import MalformedRequest, tolerant_parser

_LOGGER = logging.getLogger(__name__)

STATUS: dict[ErrorCode, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.value) for code in ErrorCode}
"""The gRPC status of each serving error code (the same names)."""


def status_of(error: ServingError) -> grpc.StatusCode:
    return STATUS[error.code]


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


def add_tolerant_service(server: grpc.aio.Server, service: str,
                         methods: dict[str, tuple[Handler, type[Message], type[Message] | type[bytes]]],
                         streams: dict[str, tuple[Handler, type[Message], type[Message] | type[bytes]]] | None = None
                         ) -> None:
    """Registers a service like the generated helpers do, but with parsers that never raise. A method whose
    response type is `bytes` answers bytes it encoded itself (`tlserve.server.frontends.grpc.wire`)."""
    def serializer(response: type[Message] | type[bytes]) -> Callable[[Any], bytes]:
        # Both are C functions: the answer's bytes are written without another Python call.
        return bytes if response is bytes else response.SerializeToString  # type: ignore[union-attr]

    handlers = {
        name: grpc.unary_unary_rpc_method_handler(method, tolerant_parser(request), serializer(response))
        for name, (method, request, response) in methods.items()
    }
    for name, (method, request, response) in (streams or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(method, tolerant_parser(request), serializer(response))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata as a dict (text values), e.g. for a caller's ``traceparent``."""
    return {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
