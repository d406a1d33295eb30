"""The whole server (`tlserve.server.assembly.Server`) in a thread of the test process, on loopback ports.

For tests whose subject is a front end or the serving core: the real gRPC and HTTP servers, the
real data plane and batchers, over a repository of tiny models, without a subprocess per test.
Clients in the test talk to it over real sockets; `call` runs a coroutine on its loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tlserve.server.assembly import Server
from tlserve.server.core import loop_idle
from tlserve.server.settings import ServerSettings
from tlserve.snapshots import Snapshots

T = TypeVar("T")


class RunningServer:
    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.http_port}"

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Runs `coroutine` on the server's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def running(repository: Path, tmp: Path, **settings: Any) -> Iterator[RunningServer]:
    """A server over `repository` on free ports (metrics off), SERVING, stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http_port = int(probe.getsockname()[1])
    config = ServerSettings(**{"repository": repository, "port": 0, "http_port": http_port, "metrics_port": 0,
                               "poll_seconds": 0, **settings})
    config.validate()
    snapshots = Snapshots.create(tmp)
    loop = loop_idle.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="in-process-server", daemon=True)
    thread.start()

    async def start() -> Server:
        server = Server(config, snapshots)
        await server.start()
        await server.load()
        return server

    server: Server | None = None
    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield RunningServer(server, loop)
    finally:
        if server is not None:
            asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(60)
            del server  # gRPC's server must go while its loop runs
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        snapshots.remove()
