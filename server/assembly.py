"""Server assembly: one process's gRPC and HTTP servers around the serving core, from start-up to drain.

Start-up order: bind the ports with health NOT_SERVING, load and warm every model in a
thread (health checks are answered meanwhile), then SERVING. On SIGTERM or SIGINT:
health NOT_SERVING, refuse new calls, let calls in flight finish within the grace
period, drain the batchers, exit 0. The repository is rescanned every `poll_seconds`
and on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tlserve.core.errors import BundleError
from tlserve.core.snapshots import Snapshots
from tlserve.server.core import loop_idle, metrics, observe
from tlserve.server.core.allocator import HeapTrimmer
from tlserve.server.core.dataplane import DataPlane
from tlserve.server.core.lifecycle import ModelLifecycle
from tlserve.server.core.payload_log import PayloadLog
from tlserve.server.core.routing import RoutingTable
from tlserve.server.frontends.grpc.native import SERVICE as CLASSIFIER
from tlserve.server.frontends.grpc.native import ClassifierServicer, add_classifier_service
from tlserve.server.frontends.grpc.oip import SERVICE as INFERENCE_SERVICE
from tlserve.server.frontends.grpc.oip import InferenceServicer, add_inference_service
from tlserve.server.frontends.grpc.security import BearerTokenInterceptor, TokenHealthServicer, server_credentials
from tlserve.server.frontends.http.app import start_http, stop_http
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)

CLASSIFIER_SERVICE = "tlserve.v1.Classifier"
# Health service for liveness probes: SERVING from the moment the port is bound (while models
# load), answered by the event loop itself, so only a wedged process fails it.
LIVENESS_SERVICE = "liveness"


# Descriptors kept for the server's own files (repository scans, stores, models, logs) when
# the connection limit is derived from the open-file limit.
RESERVED_DESCRIPTORS = 256


def raise_open_file_limit() -> int:
    """Raises this process's soft open-file limit to its hard limit (each connection is one
    descriptor; the common soft default of 1,024 is far below what a server needs); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(soft if soft != resource.RLIM_INFINITY else hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        _LOGGER.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
        return int(soft)
    return int(hard)


def connection_limit(settings: ServerSettings, open_files: int) -> int:
    """The most connections each port holds: the setting, or what the open-file limit leaves, shared by the
    gRPC and HTTP ports (so neither can take the descriptors the other needs)."""
    ports = 2 if settings.http_port else 1
    derived = max(16, (open_files - RESERVED_DESCRIPTORS) // ports)
    return min(settings.max_connections, derived) if settings.max_connections else derived


def grpc_options(settings: ServerSettings, reuse_port: bool, connections: int) -> list[tuple[str, int]]:
    """gRPC core's settings for the server: message size, and the connection and stream bounds."""
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_allowed_incoming_connections", connections),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", int(settings.handshake_timeout_seconds * 1000)),
        *([("grpc.max_connection_idle_ms", int(settings.connection_idle_seconds * 1000))]
          if settings.connection_idle_seconds else []),
        # Calls in flight when the age is reached get the drain's grace to finish.
        *([("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
           ("grpc.max_connection_age_grace_ms", int(settings.grace_seconds * 1000))]
          if settings.max_connection_age_seconds else []),
        ("grpc.http2.bdp_probe", 1 if settings.window_autotune else 0),
    ]


def model_health_name(model: str) -> str:
    """Health service name of one model: ``tlserve.v1.Classifier/<model>``."""
    return f"{CLASSIFIER_SERVICE}/{model}"


class Server:
    """One process's gRPC and HTTP servers around the serving core, assembled from its parts.

    `start` binds the ports (health NOT_SERVING, liveness SERVING), `load` makes the first repository
    scan and turns SERVING, `watch` rescans until cancelled, `stop` drains. `serve` runs one in a
    process with its signals; tests run one in a thread of their own.
    """

    def __init__(self, settings: ServerSettings, snapshots: Snapshots, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.table = RoutingTable()
        self.lifecycle = ModelLifecycle(settings, self.table, snapshots)
        self.payload_log = _payload_log(settings)
        self.plane = DataPlane(self.table, settings, self.payload_log)
        self.token = settings.token()
        self.connections = connection_limit(settings, raise_open_file_limit())
        interceptors = [BearerTokenInterceptor(self.token)] if self.token else []
        self.grpc = grpc.aio.server(interceptors=interceptors,
                                    options=grpc_options(settings, reuse_port, self.connections))
        self.health = TokenHealthServicer(self.token, frozenset({"", CLASSIFIER_SERVICE, LIVENESS_SERVICE}))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        add_classifier_service(ClassifierServicer(self.plane), self.grpc)
        add_inference_service(InferenceServicer(self.plane), self.grpc)
        reflection.enable_server_reflection(
            (CLASSIFIER, INFERENCE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME), self.grpc)
        self.http_runner: Any = None
        self.port = 0
        self.http_port = 0
        self._served_names: set[str] = set()
        self._idle_work: list[Callable[[], None]] = []

    async def start(self) -> None:
        """Binds the ports; RuntimeError or OSError says which could not be bound."""
        settings = self.settings
        self._idle_work = [metrics.DEFERRED.flush, observe.QueueSampler(self.table), HeapTrimmer()]
        loop_idle.METER.on_idle.extend(self._idle_work)
        await self._set_health("", NOT_SERVING)
        await self._set_health(CLASSIFIER_SERVICE, NOT_SERVING)
        await self._set_health(LIVENESS_SERVICE, SERVING)
        credentials = server_credentials(settings)
        address = f"{settings.host}:{settings.port}"
        try:
            self.port = self.grpc.add_secure_port(address, credentials) if credentials \
                else self.grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind {address}: {exc}") from None
        await self.grpc.start()
        if settings.http_port:
            try:
                self.http_runner, self.http_port = await start_http(self.plane, settings, self.token,
                                                                    self.reuse_port, self.connections)
            except OSError as exc:
                await self.grpc.stop(0)
                raise OSError(f"cannot bind HTTP {settings.host}:{settings.http_port}: {exc}") from None
        _LOGGER.info("listening on %s:%d (gRPC)%s (%s%s; at most %d connections per port; NOT_SERVING while "
                     "loading %s)", settings.host, self.port,
                     f" and {settings.host}:{self.http_port} (HTTP)" if self.http_runner else "",
                     "mutual TLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext",
                     ", bearer token required" if self.token else "", self.connections, settings.repository)

    async def load(self) -> None:
        """The first repository scan; SERVING once every model in it is loaded and warmed. BundleError (or
        OSError) when nothing could be loaded."""
        await self.lifecycle.reload()
        self.plane.ready = True
        if not self.table.models:
            raise BundleError(f"no model could be loaded from {self.settings.repository}")
        await self.update_health()
        await self._set_health(CLASSIFIER_SERVICE, SERVING)
        await self._set_health("", SERVING)

    async def update_health(self) -> None:
        """Each model's health: SERVING while its newest version takes calls."""
        for name in set(self.table.models) | self._served_names:
            status = (SERVING if self.table.serving(name) else NOT_SERVING) if name in self.table.models \
                else SERVICE_UNKNOWN
            await self._set_health(model_health_name(name), status)
        self._served_names = set(self.table.models)

    async def watch(self, reload_now: asyncio.Event) -> None:
        """Rescans the repository every `poll_seconds` (and at once when `reload_now` is set) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reload_now.wait(), self.settings.poll_seconds or None)
            reload_now.clear()
            try:
                changed = await self.lifecycle.reload()
            except Exception:
                _LOGGER.exception("repository scan failed; serving what is loaded")
                continue
            if changed.changed:
                await self.update_health()

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, no new calls, calls in flight get `grace` seconds, the batchers drain, logs flush."""
        self.plane.draining = True
        await self.health.enter_graceful_shutdown()
        # The batchers drain at once, beside the servers' stop: queued texts must not wait out a
        # batching delay while the grace period runs.
        await asyncio.gather(self._stop_ports(grace), self.lifecycle.close())
        if self.payload_log is not None:
            await asyncio.to_thread(self.payload_log.close)
        for work in self._idle_work:
            with contextlib.suppress(ValueError):
                loop_idle.METER.on_idle.remove(work)

    async def _stop_ports(self, grace: float) -> None:
        await asyncio.gather(self.grpc.stop(grace), *([stop_http(self.http_runner)] if self.http_runner else []))

    async def _set_health(self, service: str, status: int) -> None:
        await self.health.set(service, status)

    def describe(self) -> str:
        loaded = [served.scorer.describe() for served in self.table.all_versions()]
        return f"{len(loaded)} model version(s) {loaded} over {len(self.lifecycle.stores)} store(s)"


def _payload_log(settings: ServerSettings) -> PayloadLog | None:
    """The payload log the settings ask for, or None; OSError when its file cannot be opened."""
    if not settings.payload_log:
        return None
    path = Path(settings.payload_log)
    if settings.workers > 1:  # one file per process: rotation is not shared between processes
        path = path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
    try:
        log = PayloadLog(path, settings.payload_log_rate, settings.payload_log_hash, settings.payload_log_max_bytes,
                         settings.payload_log_backups)
    except OSError as exc:
        raise OSError(f"cannot write the payload log {path} (--payload-log): {exc.strerror or exc}") from None
    _LOGGER.info("payload log: %s of calls to %s%s", f"{settings.payload_log_rate:g}", path,
                 " (texts as SHA-256)" if settings.payload_log_hash else "")
    return log


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


async def serve(settings: ServerSettings, snapshots: Snapshots, reuse_port: bool = False,
                on_signal: Callable[[int], None] | None = None,
                stop_requested: Callable[[], bool] | None = None) -> int:
    """Runs one server process until SIGTERM/SIGINT; returns its exit code.

    `snapshots` holds the verified copies of the stores it maps (shared by the workers); `on_signal`
    sees every SIGTERM, SIGINT and SIGHUP first (the first worker passes them on to the others);
    `stop_requested` says whether a stop signal came before this function took over the signals.
    """
    started = time.perf_counter()
    if settings.otlp_endpoint:
        from tlserve.server.core import tracing

        try:
            tracing.start_otlp(settings.otlp_endpoint, settings.trace_sample_rate)
        except RuntimeError as exc:
            _LOGGER.error("%s", exc)
            return 1
        _LOGGER.info("tracing %s of calls to %s (OTLP/gRPC)", f"{settings.trace_sample_rate:g}", settings.otlp_endpoint)
    try:
        server = Server(settings, snapshots, reuse_port)
        await server.start()
    except (OSError, RuntimeError) as exc:
        _LOGGER.error("%s", exc)
        return 1
    stop = asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on(signum: int) -> None:
        if on_signal is not None:
            on_signal(signum)
        (reload_now if signum == signal.SIGHUP else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on, sig)
    if stop_requested is not None and stop_requested():
        stop.set()
    loader = asyncio.ensure_future(server.load())
    await asyncio.wait([loader, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not loader.done():
        _LOGGER.info("stopping during start-up")
        loader.cancel()
        await server.stop(0)
        return 0
    try:
        loader.result()
    except Exception as exc:
        _LOGGER.error("cannot load the repository: %s", exc)
        await server.stop(0)
        return 1
    _LOGGER.info("SERVING on %s:%d after %.2fs: %s; settings %s", settings.host, server.port,
                 time.perf_counter() - started, server.describe(),
                 {k: "***" if k == "auth_token" and v else str(v) for k, v in vars(settings).items()})
    watcher = asyncio.ensure_future(server.watch(reload_now))
    await stop.wait()
    watcher.cancel()
    _LOGGER.info("shutting down: NOT_SERVING, %.1fs grace for calls in flight", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
    if settings.otlp_endpoint:
        from tlserve.server.core import tracing

        await asyncio.to_thread(tracing.shutdown)  # exports what is buffered
    _LOGGER.info("stopped")
    return 0
