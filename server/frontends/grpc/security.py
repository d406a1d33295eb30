"""Transport security and bearer-token authentication for the gRPC port."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)

# Health must answer without a token: load balancers and orchestrators probe it.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """TLS (and, with a client CA, mutual TLS) credentials, or None for plaintext."""
    if not settings.tls_cert:
        return None
    key = Path(settings.tls_key).read_bytes()
    chain = Path(settings.tls_cert).read_bytes()
    client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def authorised(metadata: Any, expected: bytes) -> bool:
    """Whether the call's metadata carries ``authorization: <expected>``."""
    for key, value in metadata or ():
        if key == "authorization":
            presented = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            # Constant time: the comparison leaks nothing about how much of the token matched.
            return hmac.compare_digest(presented, expected)
    return False


class TokenHealthServicer(health.aio.HealthServicer):
    """grpc.health.v1 whose per-model entries need the bearer token: the server's own health stays open
    for probes, but without a token a caller could learn which models are served by guessing names."""

    def __init__(self, token: str | None, open_services: frozenset[str]) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode() if token else None
        self._open = open_services

    async def _check_token(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        if self._expected is None or request.service in self._open:
            return
        if not authorised(context.invocation_metadata(), self._expected):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"the health of {request.service!r} needs the bearer token in 'authorization' "
                                f"(open without it: {sorted(self._open)})")

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        await self._check_token(request, context)
        return await super().Check(request, context)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        await self._check_token(request, context)
        await super().Watch(request, context)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED (health excepted: its
    servicer checks the token for per-model entries itself)."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorised(self, metadata: Any) -> bool:
        return authorised(metadata, self._expected)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN_PREFIXES):
            return handler
        if self._authorised(handler_call_details.invocation_metadata):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization'")

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)
