"""Server processes: one, or N workers sharing the port.

With ``--workers N`` the process imports what workers need, then forks N-1 more workers
before any gRPC object exists (gRPC's core does not survive a fork), so the imported pages
are shared; every worker, itself included, binds the same port with SO_REUSEPORT so the
kernel spreads connections. The first worker also serves the summed metrics, passes
signals on, and stops the server if another worker dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path

from tlserve.core.snapshots import Snapshots
from tlserve.server.core import loop_idle
from tlserve.server.logs import configure_logging
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)


def run(settings: ServerSettings, log_level: str = "INFO") -> int:
    """Serves in this process (one worker) or forks `settings.workers` workers."""
    configure_logging(settings.log_format, logging.getLevelName(log_level.upper()))
    from tlserve.server.core.allocator import tune_allocator

    tune_allocator()
    # One folder of store copies for all workers, made before they fork and removed after they stop.
    snapshots = Snapshots.create(Path(settings.snapshot_dir) if settings.snapshot_dir else None)
    try:
        if settings.workers == 1:
            from tlserve.server.assembly import serve
            from tlserve.server.frontends.metrics_port import start_metrics_port

            start_metrics_port(settings, multiprocess=False)
            return loop_idle.run(serve(settings, snapshots))
        return _run_workers(settings, snapshots)
    finally:
        snapshots.remove()


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

    from tlserve.server.frontends.grpc import native, oip  # noqa: F401

    gc.freeze()


def _run_workers(settings: ServerSettings, snapshots: Snapshots) -> int:
    """Worker 1 is this process; workers 2..N are forked from it after the preload.

    Serving from the parent too saves a whole process: an idle supervisor would keep, as
    private memory, the original of every preloaded page a worker later writes.
    """
    # prometheus_client picks its multiprocess storage at import time: set it up first (nothing imported
    # before this line may import it; the server's modules are imported after it).
    metrics_dir = tempfile.mkdtemp(prefix="tlserve-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    _preload()
    from tlserve.server.assembly import serve

    children: list[int] = []
    for index in range(1, settings.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _LOGGER.info("worker %d/%d started", index + 1, settings.workers)
                code = loop_idle.run(serve(settings, snapshots, reuse_port=True))
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)

    from tlserve.server.core import metrics
    from tlserve.server.frontends.metrics_port import start_metrics_port

    start_metrics_port(settings, multiprocess=True)

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
    code = loop_idle.run(serve(settings, snapshots, reuse_port=True, on_signal=forward,
                               stop_requested=stopping.is_set))
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the loop's handlers are gone; finish the cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward(signal.SIGTERM)  # this worker stopped, for whatever reason: so do the others (once)
    supervisor.join(settings.grace_seconds + 30)
    import shutil

    shutil.rmtree(metrics_dir, ignore_errors=True)
    return max([abs(code), *exit_codes])
