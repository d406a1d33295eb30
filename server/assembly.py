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

from tlserve.server.settings import ServerSettings, max_request_bytes

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
    """The most connections to hold: the setting, or what the open-file limit leaves."""
    derived = max(16, open_files - RESERVED_DESCRIPTORS)
    return min(settings.max_connections, derived) if settings.max_connections else derived


def grpc_options(settings: ServerSettings, reuse_port: bool, connections: int) -> list[tuple[str, int]]:
    """gRPC core's settings for the server: message size, and the connection and stream bounds."""
    return [
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", max_request_bytes(settings)),
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


async def serve(settings: ServerSettings, reuse_port: bool = False,
                on_signal: Callable[[int], None] | None = None,
                stop_requested: Callable[[], bool] | None = None) -> int:
    """Runs one server process until SIGTERM/SIGINT; returns its exit code.

    `on_signal` sees every SIGTERM, SIGINT and SIGHUP first (the first worker passes them on
    to the others); `stop_requested` says whether a stop signal came before this function
    took over the signals.
    """
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from tlserve.server.core import loop_idle, metrics, observe
    from tlserve.server.core.dataplane import DataPlane
    from tlserve.server.core.lifecycle import ModelLifecycle
    from tlserve.server.core.memory import HeapTrimmer
    from tlserve.server.core.routing import RoutingTable
    from tlserve.server.frontends.grpc_native import SERVICE as CLASSIFIER
    from tlserve.server.frontends.grpc_native import ClassifierServicer, add_classifier_service
    from tlserve.server.frontends.grpc_oip import SERVICE as INFERENCE_SERVICE
    from tlserve.server.frontends.grpc_oip import InferenceServicer, add_inference_service
    from tlserve.server.frontends.security import BearerTokenInterceptor, server_credentials

    started = time.perf_counter()
    table = RoutingTable()
    lifecycle = ModelLifecycle(settings, table)
    if settings.otlp_endpoint:
        from tlserve.server.core import tracing

        try:
            tracing.start_otlp(settings.otlp_endpoint, settings.trace_sample_rate)
        except RuntimeError as exc:
            _LOGGER.error("%s", exc)
            return 1
        _LOGGER.info("tracing %s of calls to %s (OTLP/gRPC)", f"{settings.trace_sample_rate:g}", settings.otlp_endpoint)
    payload_log = None
    if settings.payload_log:
        from tlserve.server.core.payload_log import PayloadLog

        path = Path(settings.payload_log)
        if settings.workers > 1:  # one file per process: rotation is not shared between processes
            path = path.with_name(f"{path.stem}.{os.getpid()}{path.suffix}")
        payload_log = PayloadLog(path, settings.payload_log_rate, settings.payload_log_hash,
                                 settings.payload_log_max_bytes, settings.payload_log_backups)
        _LOGGER.info("payload log: %s of calls to %s%s", f"{settings.payload_log_rate:g}", path,
                     " (texts as SHA-256)" if settings.payload_log_hash else "")
    plane = DataPlane(table, settings, payload_log)
    loop_idle.METER.on_idle.append(metrics.DEFERRED.flush)
    loop_idle.METER.on_idle.append(observe.QueueSampler(table))
    loop_idle.METER.on_idle.append(HeapTrimmer())
    token = settings.token()
    interceptors = [BearerTokenInterceptor(token)] if token else []
    connections = connection_limit(settings, raise_open_file_limit())
    server = grpc.aio.server(interceptors=interceptors, options=grpc_options(settings, reuse_port, connections))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_classifier_service(ClassifierServicer(plane), server)
    add_inference_service(InferenceServicer(plane), server)
    services = (
        CLASSIFIER,
        INFERENCE_SERVICE,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(services, server)
    address = f"{settings.host}:{settings.port}"
    NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
    SERVING = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", NOT_SERVING)
    await health_servicer.set(CLASSIFIER_SERVICE, NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, SERVING)
    credentials = server_credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        _LOGGER.error("cannot bind %s: %s", address, exc)
        return 1
    await server.start()
    http_runner = None
    if settings.http_port:
        from tlserve.server.frontends.http_app import start_http, stop_http

        try:
            http_runner, http_port = await start_http(plane, settings, token, reuse_port)
        except OSError as exc:
            _LOGGER.error("cannot bind HTTP %s:%d: %s", settings.host, settings.http_port, exc)
            await server.stop(0)
            return 1
    _LOGGER.info("listening on %s:%d (gRPC)%s (%s%s; at most %d connections; NOT_SERVING while loading %s)",
                 settings.host, port, f" and {settings.host}:{http_port} (HTTP)" if http_runner else "",
                 "mutual TLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext",
                 ", bearer token required" if token else "", connections, settings.repository)

    async def stop_servers(grace: float) -> None:
        await asyncio.gather(server.stop(grace), *([stop_http(http_runner)] if http_runner else []))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop_on(signum: int) -> None:
        if on_signal is not None:
            on_signal(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_on, sig)
    if stop_requested is not None and stop_requested():
        stop.set()

    loader = asyncio.ensure_future(lifecycle.reload())
    await asyncio.wait([loader, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not loader.done():
        _LOGGER.info("stopping during start-up")
        await stop_servers(0)
        return 0
    try:
        loader.result()
    except Exception as exc:
        _LOGGER.error("cannot load the repository: %s", exc)
        await stop_servers(0)
        return 1
    plane.ready = True
    if not table.models:
        _LOGGER.error("no model could be loaded from %s", settings.repository)
        await stop_servers(0)
        return 1

    async def update_health() -> None:
        for name in set(table.models) | served_names:
            status = SERVING if name in table.models else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            await health_servicer.set(model_health_name(name), status)
        served_names.clear()
        served_names.update(table.models)

    served_names: set[str] = set()
    await update_health()
    await health_servicer.set(CLASSIFIER_SERVICE, SERVING)
    await health_servicer.set("", SERVING)
    loaded = [served.scorer.describe() for served in table.all_versions()]
    _LOGGER.info(
        "SERVING on %s:%d after %.2fs: %d model version(s) %s over %d store(s); settings %s",
        settings.host, port, time.perf_counter() - started, len(loaded), loaded, len(lifecycle.stores),
        {k: "***" if k == "auth_token" and v else str(v) for k, v in vars(settings).items()},
    )

    reload_now = asyncio.Event()

    def reload_on_hup() -> None:
        if on_signal is not None:
            on_signal(signal.SIGHUP)
        reload_now.set()

    loop.add_signal_handler(signal.SIGHUP, reload_on_hup)

    async def watch() -> None:
        # Polls the repository (and reloads at once on SIGHUP).
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reload_now.wait(), settings.poll_seconds or None)
            reload_now.clear()
            try:
                changed = await lifecycle.reload()
            except Exception:
                _LOGGER.exception("repository scan failed; serving what is loaded")
                continue
            if changed.loaded or changed.unloaded:
                await update_health()

    watcher = asyncio.ensure_future(watch())
    await stop.wait()
    watcher.cancel()
    _LOGGER.info("shutting down: NOT_SERVING, %.1fs grace for calls in flight", settings.grace_seconds)
    plane.draining = True
    await health_servicer.enter_graceful_shutdown()
    # The batchers drain at once, beside the server's stop: queued texts must not wait out a
    # batching delay while the grace period runs.
    await asyncio.gather(stop_servers(settings.grace_seconds), lifecycle.close())
    if payload_log is not None:
        await asyncio.to_thread(payload_log.close)
    if settings.otlp_endpoint:
        from tlserve.server.core import tracing

        await asyncio.to_thread(tracing.shutdown)  # exports what is buffered
    _LOGGER.info("stopped")
    return 0


