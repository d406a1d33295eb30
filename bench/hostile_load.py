"""Small calls beside large ones: a one-text caller's latency while others send huge requests.

    python -m tlserve.bench.hostile_load --repository R --model M [--seconds 10] [--out hostile.json]

Starts `tlserve serve` on a free loopback port and measures, in turn:

- quiet: a one-text caller alone (100 calls/s; each call timed from its send);
- large requests: the same caller while 4 client processes send requests of 1,023 texts of
  16 KB each, back to back (the documented limits);
- readers that do not read: the same caller while 64 ClassifyStream streams send requests and
  never read the answers (with 1 text and with 1,023 texts per message);
- idle connections: the same caller while 2,000 TCP connections are held open and idle (run
  with ``--server-nofile 1024`` to start the server under the common open-file limit).

For each: the caller's p50/p99/max and failed calls, and the server's RSS before, at the end
of the load, and 10 s after it (memory must come back after a burst).

``--system ceiling`` runs the same scenarios against the no-op gRPC server
(`tlserve.bench.ceiling`): on a small machine the hostile clients share the cores with the
server and the caller, and the no-op server shows what that alone costs the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.bench.systems import free_port, tlserve_serve_command

CONTEXT = multiprocessing.get_context("spawn")
WORDS = ("cat", "dog", "tree", "house", "river", "mountain", "computer", "program", "person", "animal", "plant",
         "music", "money", "time", "water", "fire", "city", "road", "light", "sound", "window", "garden", "forest",
         "ocean", "market", "letter", "train", "paper", "table", "friend")


def big_text(rng: random.Random, size: int = 16_384) -> str:
    words: list[str] = []
    length = 0
    while True:
        word = rng.choice(WORDS)
        if length + len(word) + 1 > size:
            return " ".join(words)
        words.append(word)
        length += len(word) + 1


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _heavy_unary(target: str, model: str, texts: int, stop_at: float) -> None:
    import grpc

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    rng = random.Random(7)
    request = pb.ClassifyRequest(model=model, texts=[big_text(rng) for _ in range(texts)])
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        while time.time() < stop_at:
            try:
                await stub.Classify(request, timeout=30)
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.01)


async def _silent_streams(target: str, model: str, streams: int, texts: int, stop_at: float) -> None:
    """Streams that send requests as fast as gRPC takes them and never read an answer."""
    import grpc

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    rng = random.Random(11)
    body = [big_text(rng, 60) for _ in range(texts)]
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ClassifierStub(channel)

        async def one() -> None:
            call = stub.ClassifyStream()
            try:
                while time.time() < stop_at:
                    await asyncio.wait_for(call.write(pb.ClassifyRequest(model=model, texts=body)),
                                           max(0.01, stop_at - time.time()))
            except (TimeoutError, grpc.aio.AioRpcError, asyncio.InvalidStateError):
                pass
            finally:
                call.cancel()

        await asyncio.gather(*(one() for _ in range(streams)))


def _load_process(kind: str, target: str, model: str, count: int, texts: int, stop_at: float) -> None:
    if kind == "unary":
        asyncio.run(_heavy_unary(target, model, texts, stop_at))
    else:
        asyncio.run(_silent_streams(target, model, count, texts, stop_at))


async def _small_caller(target: str, model: str, seconds: float, rate: float = 100.0) -> dict[str, Any]:
    import grpc

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    latencies: list[float] = []
    failures = 0
    codes: dict[str, int] = {}
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        request = pb.ClassifyRequest(model=model, texts=["a small domesticated cat"])
        await stub.Classify(request, timeout=30)
        loop = asyncio.get_running_loop()
        start = loop.time()
        due = start
        while due < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            sent = loop.time()
            try:
                await stub.Classify(request, timeout=30)
                latencies.append((loop.time() - sent) * 1000)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            due = max(due + 1.0 / rate, loop.time())  # paced at `rate`, never faster to catch up
    values = np.array(latencies) if latencies else np.zeros(1)
    return {"calls": len(latencies), "failed": failures, "failed_codes": codes,
            "p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2),
            "max_ms": round(float(values.max()), 2)}


def scenario(target: str, model: str, pid: int, seconds: float, load: tuple[str, int, int, int] | None
             ) -> dict[str, Any]:
    """`load` = (kind, processes, per-process count, texts per message)."""
    before = _rss_mb(pid)
    workers = []
    if load is not None and load[0] == "idle":
        return _with_idle_connections(target, model, pid, seconds, load[2])
    if load is not None:
        kind, processes, count, texts = load
        stop_at = time.time() + seconds + 2.0
        workers = [CONTEXT.Process(target=_load_process, args=(kind, target, model, count, texts, stop_at),
                                   daemon=True) for _ in range(processes)]
        for worker in workers:
            worker.start()
        time.sleep(2.0)  # the load is running before the measurement starts
    result = asyncio.run(_small_caller(target, model, seconds))
    result["rss_before_mb"] = round(before, 1)
    result["rss_end_mb"] = round(_rss_mb(pid), 1)
    for worker in workers:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    if load is not None:
        time.sleep(10.0)
        result["rss_10s_after_mb"] = round(_rss_mb(pid), 1)
    return result


def _with_idle_connections(target: str, model: str, pid: int, seconds: float, count: int) -> dict[str, Any]:
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the sockets
    host, port = target.rsplit(":", 1)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(socket.create_connection((host, int(port)), timeout=10))
        result = asyncio.run(_small_caller(target, model, seconds))  # a new connection, after the flood
        result["idle_connections"] = len(held)
        result["rss_end_mb"] = round(_rss_mb(pid), 1)
        return result
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SCENARIOS: dict[str, tuple[str, int, int, int] | None] = {
    "quiet": None,
    "large_requests": ("unary", 4, 1, 1023),
    "quiet_after_large": None,
    "silent_streams_1_text": ("stream", 1, 64, 1),
    "silent_streams_1023_texts": ("stream", 1, 64, 1023),
    "idle_connections": ("idle", 0, 2000, 0),
}


def _wait_answering(target: str, model: str, timeout: float = 60.0) -> None:
    """Until the server answers a Classify call (the no-op server has no health service)."""
    import grpc

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        until = time.time() + timeout
        while True:
            try:
                stub.Classify(pb.ClassifyRequest(model=model, texts=["ready"]), timeout=5, wait_for_ready=True)
                return
            except grpc.RpcError:
                if time.time() > until:
                    raise
                time.sleep(0.2)


def run(repository: Path, model: str, seconds: float, out: Path | None, extra: list[str],
        scenarios: list[str] | None = None, server_nofile: int = 0, system: str = "tlserve") -> dict[str, Any]:
    """`system` "ceiling": the same scenarios against the no-op gRPC server (`tlserve.bench.ceiling`), what
    Python gRPC and this machine allow beside the same hostile clients."""
    import sys

    scenarios = scenarios or list(SCENARIOS)
    port = free_port()
    target = f"127.0.0.1:{port}"
    launcher = []
    if server_nofile:
        import resource

        launcher = ["prlimit", f"--nofile={server_nofile}:{resource.getrlimit(resource.RLIMIT_NOFILE)[1]}"]
    command = (tlserve_serve_command(repository, port) + extra if system == "tlserve"
               else [sys.executable, "-m", "tlserve.bench.ceiling", "--port", str(port)])
    server = subprocess.Popen(launcher + command)
    try:
        _wait_answering(target, model)
        report: dict[str, Any] = {"system": system, "seconds": seconds, "server_nofile": server_nofile or "unchanged"}
        for name in scenarios:
            report[name] = scenario(target, model, server.pid, seconds, SCENARIOS[name])
    finally:
        server.terminate()
        server.wait(60)
    print(json.dumps(report, indent=1))
    if out is not None:
        out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), help="default: all, in this order")
    parser.add_argument("--server-nofile", type=int, default=0,
                        help="start the server with this soft open-file limit (prlimit), e.g. 1024")
    parser.add_argument("--system", choices=["tlserve", "ceiling"], default="tlserve",
                        help="ceiling: the no-op gRPC server with tlserve's messages, as the reference")
    args, extra = parser.parse_known_args()
    run(args.repository, args.model, args.seconds, args.out, extra, args.scenarios, args.server_nofile, args.system)


if __name__ == "__main__":
    main()
