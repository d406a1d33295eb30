"""What the benchmark's own gRPC servers (the no-op ceiling, the naive approach) share."""

from __future__ import annotations

import asyncio
import signal

import grpc


async def serve_until_signalled(server: grpc.aio.Server, port: int) -> None:
    """Binds 127.0.0.1:`port`, serves until SIGTERM or SIGINT, then stops with 1 s of grace."""
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
