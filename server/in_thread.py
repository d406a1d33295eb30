"""The whole server (`tlserve.server.assembly.Server`) in a thread of this process, on loopback ports.

For tools and tests whose subject is a front end or the serving core: the real gRPC and HTTP
servers, data plane and batchers, without a process of their own. Clients talk to it over real
sockets; `RunningServer.call` runs a coroutine on its event loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tlserve.core.snapshots import Snapshots
from tlserve.server.assembly import Server
from tlserve.server.core import loop_idle
from tlserve.server.settings import ServerSettings

T = TypeVar("T")


class RunningServer:
    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.server = server
        self.loop = loop
        self.thread = thread
        """The thread that runs the event loop."""

    @property
    def target(self) -> str:
        """The gRPC port's address."""
        return f"127.0.0.1:{self.server.port}"

    @property
    def http(self) -> str:
        """The HTTP port's base URL."""
        return f"http://127.0.0.1:{self.server.http_port}"

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs `coroutine` on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running(repository: Path, snapshot_parent: Path | None = None, **settings: Any) -> Iterator[RunningServer]:
    """A server over `repository` on free loopback ports (metrics off, no polling), SERVING, stopped on exit;
    `settings` are `ServerSettings` fields."""
    config = ServerSettings(**{"repository": repository, "host": "127.0.0.1", "port": 0, "http_port": free_port(),
                               "metrics_port": 0, "poll_seconds": 0, **settings})
    config.validate()
    snapshots = Snapshots.create(snapshot_parent)
    loop = loop_idle.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-thread-server", daemon=True)
    thread.start()

    async def start() -> Server:
        server = Server(config, snapshots)
        await server.start()
        await server.load()
        return server

    server: Server | None = None
    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(120)
        yield RunningServer(server, loop, thread)
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(60)
            del server  # gRPC's server must go while its loop runs
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        snapshots.remove()
