"""The HTTP port: an aiohttp application in the gRPC server's event loop, over the same data plane.

One process, one event loop, one batcher per model version: an HTTP call and a gRPC call
to the same model share batches, queue limits and metrics. aiohttp rather than an ASGI
stack: it runs inside an existing asyncio loop without a server process of its own, has
routing, a body-size limit, TLS and middleware built in, and answered as fast as uvicorn
with httptools in the same loop (about 12,000 no-op requests/s at 16 connections here).
"""

from __future__ import annotations

import logging
import ssl

from aiohttp import web

from tlserve.server.core.dataplane import DataPlane
from tlserve.server.frontends.http import openapi
from tlserve.server.frontends.http.common import OPEN_PATHS, bearer_token, errors
from tlserve.server.frontends.http.connections import CappedRunner, ConnectionCap
from tlserve.server.frontends.http.json_bodies import BODY_LIMIT, json_response
from tlserve.server.frontends.http.native import NativeJsonApi
from tlserve.server.frontends.http.oip import OpenInferenceRest
from tlserve.server.frontends.http.page import STATIC_PATHS, StatusPage
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)
# The listen backlog, which is also how many connections asyncio accepts at one wake-up.
ACCEPT_BURST = 128


def build_app(plane: DataPlane, settings: ServerSettings, token: str | None,
              cap: ConnectionCap | None = None) -> web.Application:
    middlewares = [*([cap.middleware] if cap else []), errors,
                   *([bearer_token(token, OPEN_PATHS | STATIC_PATHS)] if token else [])]
    # The body limit is gRPC's message limit: one number for both ports (JSON spends a little of it on quoting).
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=middlewares)
    app[BODY_LIMIT] = settings.max_request_bytes
    timeout = settings.http_body_timeout_seconds
    app.add_routes(OpenInferenceRest(plane, timeout).routes())
    app.add_routes(NativeJsonApi(plane, timeout).routes())
    app.add_routes(StatusPage(plane).routes())
    spec = openapi.document()

    async def openapi_json(request: web.Request) -> web.Response:
        return json_response(spec)

    app.router.add_get("/openapi.json", openapi_json)
    return app


def ssl_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The same certificate (and client CA, for mutual TLS) as the gRPC port, or None for plaintext."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.load_verify_locations(settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def start_http(plane: DataPlane, settings: ServerSettings, token: str | None,
                     reuse_port: bool, connections: int) -> tuple[web.AppRunner, int]:
    """Binds and starts the HTTP port (at most `connections` connections); returns the runner (for
    `stop_http`) and the bound port."""
    # asyncio accepts up to `backlog` connections per wake-up before any is closed: the cap leaves room
    # for one such burst within the port's share of the descriptors.
    cap = ConnectionCap(max(16, connections - ACCEPT_BURST))
    # Bodies are inflated by `read_body`, within the request limit: aiohttp's own inflation would fill
    # memory up to the limit for every request a small compressed upload makes.
    runner = CappedRunner(build_app(plane, settings, token, cap), cap, access_log=None,
                          shutdown_timeout=settings.grace_seconds, auto_decompress=False,
                          keepalive_timeout=settings.connection_idle_seconds or 3600 * 24 * 365)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.http_port, ssl_context=ssl_context(settings),
                       reuse_port=reuse_port or None, backlog=ACCEPT_BURST)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def stop_http(runner: web.AppRunner) -> None:
    """Stops accepting, lets requests in flight finish within the grace period, closes connections."""
    await runner.cleanup()
