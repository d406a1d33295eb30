"""`tlserve serve`: the gRPC server process (or processes) around the data plane.

Start-up order: bind the port with health NOT_SERVING, load and warm every model in a
thread (health checks are answered meanwhile), then SERVING. On SIGTERM or SIGINT:
health NOT_SERVING, refuse new calls, let calls in flight finish within the grace
period, drain the batchers, exit 0.

With ``--workers N`` the process imports what workers need, then forks N-1 more workers
before any gRPC object exists (gRPC's core does not survive a fork), so the imported pages
are shared; every worker, itself included, binds the same port with SO_REUSEPORT so the
kernel spreads connections. The first worker also serves the summed metrics, passes
signals on, and stops the server if another worker dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from tlserve.server import loop_idle
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)

CLASSIFIER_SERVICE = "tlserve.v1.Classifier"


def model_health_name(model: str) -> str:
    """Health service name of one model: ``tlserve.v1.Classifier/<model>``."""
    return f"{CLASSIFIER_SERVICE}/{model}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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

    from tlserve.client.v1 import classifier_pb2
    from tlserve.server import metrics
    from tlserve.server.dataplane import DataPlane
    from tlserve.server.open_inference import SERVICE as INFERENCE_SERVICE
    from tlserve.server.open_inference import InferenceServicer, add_inference_service
    from tlserve.server.repository import ModelRepository
    from tlserve.server.runtime import session_options
    from tlserve.server.security import BearerTokenInterceptor, server_credentials
    from tlserve.server.servicers import ClassifierServicer, add_classifier_service

    started = time.perf_counter()
    repository = ModelRepository(
        settings.repository,
        session_options(settings.intra_op_threads, settings.inter_op_threads, settings.allow_spinning),
        version_policy=settings.version_policy,
    )
    plane = DataPlane(repository, settings)
    loop_idle.METER.on_idle.append(metrics.DEFERRED.flush)
    token = settings.token()
    interceptors = [BearerTokenInterceptor(token)] if token else []
    server = grpc.aio.server(interceptors=interceptors, options=[
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_receive_message_length", max(4 << 20, settings.max_texts_per_request * settings.max_text_bytes)),
    ])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_classifier_service(ClassifierServicer(plane), server)
    add_inference_service(InferenceServicer(plane), server)
    services = (
        classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name,
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
    credentials = server_credentials(settings)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError as exc:
        _LOGGER.error("cannot bind %s: %s", address, exc)
        return 1
    await server.start()
    _LOGGER.info("listening on %s:%d (%s%s; NOT_SERVING while loading %s)", settings.host, port,
                 "mutual TLS" if settings.tls_client_ca else "TLS" if credentials else "plaintext",
                 ", bearer token required" if token else "", settings.repository)

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

    loader = asyncio.ensure_future(plane.reload())
    await asyncio.wait([loader, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if not loader.done():
        _LOGGER.info("stopping during start-up")
        await server.stop(0)
        return 0
    try:
        loader.result()
    except Exception as exc:
        _LOGGER.error("cannot load the repository: %s", exc)
        await server.stop(0)
        return 1
    if not repository.models:
        _LOGGER.error("no model could be loaded from %s", settings.repository)
        await server.stop(0)
        return 1

    async def update_health() -> None:
        for name in {name for name, _ in plane.batchers} | served_names:
            status = SERVING if name in repository.models else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            await health_servicer.set(model_health_name(name), status)
        served_names.clear()
        served_names.update(repository.models)

    served_names: set[str] = set()
    await update_health()
    await health_servicer.set(CLASSIFIER_SERVICE, SERVING)
    await health_servicer.set("", SERVING)
    loaded = [runtime.describe() for versions in repository.models.values() for runtime in versions.values()]
    _LOGGER.info(
        "SERVING on %s:%d after %.2fs: %d model version(s) %s over %d store(s); settings %s",
        settings.host, port, time.perf_counter() - started, len(loaded), loaded, len(repository.stores),
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
                changed = await plane.reload()
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
    await server.stop(settings.grace_seconds)
    await plane.close()
    _LOGGER.info("stopped")
    return 0


def run(settings: ServerSettings, log_level: str = "INFO") -> int:
    """Serves in this process (one worker) or forks `settings.workers` workers."""
    configure_logging(settings.log_format, logging.getLevelName(log_level.upper()))
    if settings.workers == 1:
        from tlserve.server import metrics

        metrics.start_metrics_server(settings.metrics_host, settings.metrics_port, multiprocess=False)
        return loop_idle.run(serve(settings))
    return _run_workers(settings)


def _preload() -> None:
    """Imports what every worker needs once, in the parent, so the workers share those pages.

    The modules' heap (tens of MB of code objects and tables) is then copy-on-write shared by
    all workers instead of private to each; gc.freeze() keeps the collector from touching,
    and so copying, it. Only imports: no gRPC channel, server or onnxruntime session exists
    before the fork (gRPC's core and onnxruntime's thread pools do not survive one).
    """
    import gc

    import grpc.aio  # noqa: F401
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    from grpc_health.v1 import health  # noqa: F401
    from grpc_reflection.v1alpha import reflection  # noqa: F401

    from tlserve.server import dataplane, open_inference, servicers  # noqa: F401

    gc.freeze()


def _run_workers(settings: ServerSettings) -> int:
    """Worker 1 is this process; workers 2..N are forked from it after the preload.

    Serving from the parent too saves a whole process: an idle supervisor would keep, as
    private memory, the original of every preloaded page a worker later writes.
    """
    # prometheus_client picks its multiprocess storage at import time: set it up first.
    metrics_dir = tempfile.mkdtemp(prefix="tlserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _preload()
    children: list[int] = []
    for index in range(1, settings.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _LOGGER.info("worker %d/%d started", index + 1, settings.workers)
                code = loop_idle.run(serve(settings, reuse_port=True))
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    from tlserve.server import metrics

    metrics.start_metrics_server(settings.metrics_host, settings.metrics_port, multiprocess=True)

    stopping = threading.Event()

    def forward(signum: int) -> None:
        if signum != signal.SIGHUP:
            if stopping.is_set():
                return  # once: a second SIGTERM could reach a worker after its handlers are gone
            stopping.set()
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    exit_codes: list[int] = []

    def supervise() -> None:
        # A worker that dies stops the whole server, so the orchestrator restarts it whole.
        remaining = set(children)
        while remaining:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return
            remaining.discard(pid)
            metrics.mark_worker_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            exit_codes.append(abs(code))
            if code != 0 and not stopping.is_set():
                _LOGGER.error("worker %d exited with %d; stopping the others", pid, code)
                os.kill(os.getpid(), signal.SIGTERM)  # this worker's handler forwards it

    def early_stop(signum: int, _frame: object) -> None:
        forward(signum)  # before this worker's event loop takes over the signals

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)
    supervisor = threading.Thread(target=supervise, name="supervise-workers", daemon=True)
    supervisor.start()
    _LOGGER.info("worker 1/%d started", settings.workers)
    code = loop_idle.run(serve(settings, reuse_port=True, on_signal=forward, stop_requested=stopping.is_set))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the loop's handlers are gone; finish the cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward(signal.SIGTERM)  # this worker stopped, for whatever reason: so do the others (once)
    supervisor.join(settings.grace_seconds + 30)
    import shutil

    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max([abs(code), *exit_codes])
