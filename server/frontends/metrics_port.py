"""The Prometheus metrics port: /metrics over HTTP, with the server's bearer token and TLS when it has them.

prometheus_client's own server would expose the metrics to anyone who reaches the port (the
container image binds it to every address for the scraper). This one serves the same
exposition, refuses a request without the server's token (Prometheus sends it with
``authorization: {credentials: ...}`` in its scrape config), speaks TLS with the server's
certificate, and gives a connection that sends nothing a few seconds, not a thread forever.
"""

from __future__ import annotations

import hmac
import logging
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app

from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)
# Seconds a scrape connection may take to send its request: a scraper sends it at once.
REQUEST_SECONDS = 10.0

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    timeout = REQUEST_SECONDS  # socket timeout: a connection that sends nothing goes

    def log_message(self, format: str, *args: Any) -> None:
        """No access log (the server logs what matters)."""


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _with_token(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    expected = f"Bearer {token}".encode()

    def checked(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # WSGI gives headers as latin-1 str: their bytes back as sent.
        presented = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if hmac.compare_digest(presented, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                            ("WWW-Authenticate", 'Bearer realm="tlserve"')])
        return [b"missing or wrong bearer token in 'Authorization'\n"]

    return checked


def start_metrics_port(settings: ServerSettings, multiprocess: bool) -> None:
    """Serves /metrics on the metrics port in a thread (nothing when the port is 0); in multiprocess mode,
    the sum over the worker processes' files."""
    if settings.metrics_port == 0:
        return
    registry: CollectorRegistry = REGISTRY
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
    app = make_wsgi_app(registry)
    token = settings.token()
    if token:
        app = _with_token(app, token)
    server = make_server(settings.metrics_host, settings.metrics_port, app, _Server, handler_class=_QuietHandler)
    if settings.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="metrics-port", daemon=True).start()
    _LOGGER.info("metrics on %s://%s:%d/metrics (%s%s)", "https" if settings.tls_cert else "http",
                 settings.metrics_host, settings.metrics_port, "multiprocess" if multiprocess else "single process",
                 ", bearer token required" if token else "")
