"""A cap on the HTTP port's connections: a new connection beyond it closes the one idle longest.

Each connection is a file descriptor, and the process shares its descriptors with the gRPC port,
the repository and the stores: idle connections left uncapped (a client that opens thousands and
sends nothing) exhaust them, and every port stops accepting. At the cap, a new connection takes
the place of the connection idle longest, preferring one that never sent a request (as nginx
reuses its idle keep-alive connections when it runs out); only when every connection has a
request in flight is the new one closed. Idle connections are also closed after
``connection_idle_seconds`` (aiohttp's keep-alive timeout, which runs from the connection's
start, so one that never sends a request goes too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from tlserve.server.frontends.http.common import Handler

_LOGGER = logging.getLogger(__name__)
_WARN_EVERY_SECONDS = 60.0


class _Connection:
    __slots__ = ("in_flight", "last_active", "used")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.last_active = now
        self.used = False  # has sent a request


class ConnectionCap:
    """Tracks the port's connections (through the aiohttp server's hooks and a middleware) and keeps them
    at most `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.connections: dict[RequestHandler, _Connection] = {}
        self.evicted = 0
        self.refused = 0
        self._warned_at = -_WARN_EVERY_SECONDS

    def attach(self, server: web.Server) -> None:
        """Hooks into `server`'s connection bookkeeping (its own runs first)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            lost(handler, exc)
            self.connections.pop(handler, None)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def _opened(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        self.connections[handler] = _Connection(time.monotonic())
        if len(self.connections) <= self.limit:
            return
        idle = [(state.used, state.last_active, id(other), other) for other, state in self.connections.items()
                if other is not handler and state.in_flight == 0]
        if idle:
            victim = min(idle)[3]
            self.connections.pop(victim, None)
            victim.force_close()  # close() waits for a request that an idle connection may never send
            self.evicted += 1
        else:
            self.connections.pop(handler, None)
            transport.close()
            self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            _LOGGER.warning("HTTP port at its cap of %d connections (max_connections): %d idle connections closed "
                            "for new ones and %d new ones refused so far", self.limit, self.evicted, self.refused)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        state = self.connections.get(request.protocol)
        if state is None:
            return await handler(request)
        state.in_flight += 1
        state.used = True
        try:
            return await handler(request)
        finally:
            state.in_flight -= 1
            state.last_active = time.monotonic()


class CappedRunner(web.AppRunner):
    """An AppRunner whose server keeps at most `cap.limit` connections."""

    def __init__(self, app: web.Application, cap: ConnectionCap, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.cap = cap

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        self.cap.attach(server)
        return server
