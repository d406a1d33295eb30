"""Small calls beside large ones: a one-text caller's latency while others send huge requests.

    python -m tlserve.bench.hostile_load --repository R --model M [--seconds 10] [--out hostile.json]

Starts `tlserve serve` on a free loopback port and measures, in turn:

- quiet: a one-text caller alone (100 calls/s; each call timed from its send);
- large requests: the same caller while 4 client processes send requests of 1,023 texts of
  16 KB each, back to back (the documented limits);
- readers that do not read: the same caller while 64 ClassifyStream streams send requests and
  never read the answers (with 1 text and with 1,023 texts per message);
- idle connections: the same caller while 2,000 TCP connections are held open and idle (run
  with ``--server-nofile 1024`` to start the server under the common open-file limit);
- the HTTP port: bodies of 2 M and 8 M one-character texts (each refusal timed); 4 client
  processes sending requests at the request size limit over HTTP (and over gRPC, as "large
  requests"), with ``/v2/health/live`` probed 20 times a second; 2,000 idle HTTP connections,
  with an HTTP caller beside the gRPC one, and how many of them the server has closed after the
  run; 40 concurrent gzip bodies of 1 MB that inflate to 1 GiB (answers and peak RSS).

For each: the caller's p50/p99/max and failed calls, and the server's RSS before, at the end
of the load, and 10 s after it (memory must come back after a burst).

``--system ceiling`` runs the same scenarios against the no-op gRPC server
(`tlserve.bench.ceiling`): on a small machine the hostile clients share the cores with the
server and the caller, and the no-op server shows what that alone costs the caller.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


def _http_post(port: int, path: str, body: bytes, headers: dict[str, str] | None = None,
               timeout: float = 120.0) -> tuple[int, float]:
    """Status and seconds of one POST (599: the connection failed)."""
    import http.client

    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    except OSError:
        return 599, time.perf_counter() - started
    finally:
        connection.close()


def _heavy_http(port: int, model: str, texts: int, stop_at: float) -> None:
    rng = random.Random(7)
    body = json.dumps({"texts": [big_text(rng) for _ in range(texts)]}).encode()
    while time.time() < stop_at:
        _http_post(port, f"/v1/models/{model}:classify", body)


def _tiny_texts_http(port: int, model: str, counts: tuple[int, ...], stop_at: float, results: Any) -> None:
    """Bodies of `counts` one-character texts, in turn, until `stop_at`; each answer's status and seconds."""
    bodies = {count: json.dumps({"texts": ["a"] * count}).encode() for count in counts}
    while time.time() < stop_at:
        for count, body in bodies.items():
            status, seconds = _http_post(port, f"/v1/models/{model}:classify", body)
            results.put((count, status, seconds))


def _load_process(kind: str, target: str, model: str, count: int, texts: int, stop_at: float,
                  http_port: int = 0, results: Any = None) -> None:
    if kind == "unary":
        asyncio.run(_heavy_unary(target, model, texts, stop_at))
    elif kind == "http":
        _heavy_http(http_port, model, texts, stop_at)
    elif kind == "tiny_http":
        _tiny_texts_http(http_port, model, (2_000_000, 8_000_000), stop_at, results)
    else:
        asyncio.run(_silent_streams(target, model, count, texts, stop_at))


async def _http_prober(port: int, path: str, stop: asyncio.Event, rate: float = 20.0,
                       body: bytes | None = None) -> dict[str, Any]:
    """GET (or POST `body` to) `path` `rate` times a second until `stop`: p50/p99/max and failures."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0
    while not stop.is_set():
        sent = loop.time()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            method = "POST" if body is not None else "GET"
            head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body or b'')}\r\n\r\n")
            writer.write(head.encode() + (body or b""))
            answer = await asyncio.wait_for(reader.read(), 30)
            writer.close()
            if not answer.startswith(b"HTTP/1.1 200"):
                failures += 1
            else:
                latencies.append((loop.time() - sent) * 1000)
        except (OSError, TimeoutError):
            failures += 1
        await asyncio.sleep(max(0.0, 1.0 / rate - (loop.time() - sent)))
    values = np.array(latencies) if latencies else np.zeros(1)
    return {"calls": len(latencies), "failed": failures, "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p99_ms": round(float(np.percentile(values, 99)), 2), "max_ms": round(float(values.max()), 2)}


async def _callers(target: str, model: str, seconds: float, http_port: int, probe_health: bool,
                   http_caller: bool) -> dict[str, Any]:
    """The small gRPC caller, with (optionally) the health prober and a small HTTP caller beside it."""
    stop = asyncio.Event()
    side: dict[str, asyncio.Task[dict[str, Any]]] = {}
    if probe_health:
        side["health_live"] = asyncio.ensure_future(_http_prober(http_port, "/v2/health/live", stop))
    if http_caller:
        body = json.dumps({"texts": ["a small domesticated cat"]}).encode()
        side["http_caller"] = asyncio.ensure_future(
            _http_prober(http_port, f"/v1/models/{model}:classify", stop, 50.0, body))
    result = await _small_caller(target, model, seconds)
    stop.set()
    for name, task in side.items():
        result[name] = await task
    return result


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
        loop = asyncio.get_running_loop()
        first = loop.time()
        # The first call waits for a connection (a port flooded with connections may refuse it for a while).
        first_error = ""
        try:
            await stub.Classify(request, timeout=60, wait_for_ready=True)
        except grpc.aio.AioRpcError as exc:
            first_error = exc.code().name
        first_ms = (loop.time() - first) * 1000
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
    return {"first_call_ms": round(first_ms, 1), **({"first_call_failed": first_error} if first_error else {}),
            "calls": len(latencies), "failed": failures, "failed_codes": codes,
            "p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2),
            "max_ms": round(float(values.max()), 2)}


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _gzip_bombs(http_port: int, model: str, pid: int, count: int = 40) -> dict[str, Any]:
    """`count` concurrent gzip bodies of about 1 MB that inflate to 1 GiB: statuses and the server's peak RSS."""
    import gzip
    from concurrent.futures import ThreadPoolExecutor

    bomb = gzip.compress(b" " * (1 << 30), compresslevel=9)
    # The kernel's peak RSS (VmHWM) restarts from the current RSS, so earlier scenarios' peaks do not hide
    # this one's (writing 5 to clear_refs; the server is this user's process).
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    before, peak_before = _rss_mb(pid), _peak_rss_mb(pid)
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: _http_post(http_port, f"/v1/models/{model}:classify", bomb,
                                                     {"Content-Encoding": "gzip"}), range(count)))
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    time.sleep(10.0)
    return {"bombs": count, "compressed_bytes": len(bomb), "statuses": statuses,
            "max_seconds": round(max(seconds for _, seconds in answers), 2), "rss_before_mb": round(before, 1),
            "peak_rss_growth_mb": round(_peak_rss_mb(pid) - peak_before, 1),
            "rss_10s_after_mb": round(_rss_mb(pid), 1)}


def scenario(target: str, model: str, pid: int, seconds: float, load: tuple[str, int, int, int] | None,
             http_port: int = 0) -> dict[str, Any]:
    """`load` = (kind, processes, per-process count, texts per message)."""
    before = _rss_mb(pid)
    workers = []
    refusals: Any = None
    if load is not None and load[0] == "idle":
        return _with_idle_connections(target, model, pid, seconds, load[2])
    if load is not None and load[0] == "idle_http":
        return _with_idle_connections(target, model, pid, seconds, load[2], http_port)
    if load is not None and load[0] == "gzip":
        return _gzip_bombs(http_port, model, pid, load[2])
    if load is not None:
        kind, processes, count, texts = load
        stop_at = time.time() + seconds + 2.0
        refusals = CONTEXT.Queue() if kind == "tiny_http" else None
        workers = [CONTEXT.Process(target=_load_process, args=(kind, target, model, count, texts, stop_at, http_port,
                                                               refusals), daemon=True) for _ in range(processes)]
        for worker in workers:
            worker.start()
        time.sleep(2.0)  # the load is running before the measurement starts
    probe = http_port > 0 and load is not None and load[0] in ("http", "unary", "tiny_http")
    result = asyncio.run(_callers(target, model, seconds, http_port, probe, False))
    result["rss_before_mb"] = round(before, 1)
    result["rss_end_mb"] = round(_rss_mb(pid), 1)
    if refusals is not None:
        answers: dict[str, list[float]] = {}
        while not refusals.empty():
            count, status, took = refusals.get()
            answers.setdefault(f"{count}_texts_{status}", []).append(took)
        result["tiny_text_bodies"] = {key: {"answers": len(values), "max_seconds": round(max(values), 3)}
                                      for key, values in answers.items()}
    for worker in workers:
        worker.join(30)
        if worker.is_alive():
            worker.kill()
    if load is not None:
        time.sleep(10.0)
        result["rss_10s_after_mb"] = round(_rss_mb(pid), 1)
    return result


def _with_idle_connections(target: str, model: str, pid: int, seconds: float, count: int, http_port: int = 0
                           ) -> dict[str, Any]:
    """`count` idle connections to the gRPC port (or to the HTTP port, with an HTTP caller beside the gRPC one);
    then, for the HTTP port, how many the server has closed after its idle time (`--connection-idle-seconds`)."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this process holds the sockets
    host, port = target.rsplit(":", 1)
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(socket.create_connection((host, http_port or int(port)), timeout=10))
        # New connections, after the flood.
        result = asyncio.run(_callers(target, model, seconds, http_port, False, http_port > 0))
        result["idle_connections"] = len(held)
        result["rss_end_mb"] = round(_rss_mb(pid), 1)
        if http_port:
            time.sleep(IDLE_SECONDS + 2.0)  # past the idle time the benchmark sets
            closed = 0
            for sock in held:
                sock.setblocking(False)
                try:
                    closed += sock.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
            result["closed_by_server_after_idle_time"] = closed
        return result
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


IDLE_SECONDS = 10.0
"""The server's --connection-idle-seconds in these runs."""

# Texts of 16 KB per request at the request size limit (4 MiB): 255 fit a gRPC message, 250 a JSON body.
MAX_SIZE_TEXTS = 255
SCENARIOS: dict[str, tuple[str, int, int, int] | None] = {
    "quiet": None,
    "large_requests": ("unary", 4, 1, MAX_SIZE_TEXTS),
    "quiet_after_large": None,
    "silent_streams_1_text": ("stream", 1, 64, 1),
    "silent_streams_1023_texts": ("stream", 1, 64, 1023),
    "idle_connections": ("idle", 0, 2000, 0),
    "http_tiny_texts": ("tiny_http", 1, 1, 0),
    "http_large_requests": ("http", 4, 1, 250),
    "http_idle_connections": ("idle_http", 0, 2000, 0),
    "http_gzip_bombs": ("gzip", 0, 40, 0),
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
        launcher = ["prlimit", f"--nofile={server_nofile}:{server_nofile}"]  # soft and hard: as `ulimit -n`
    http_port = free_port() if system == "tlserve" else 0
    # Idle connections close after 10 s (the server's default is 300 s), so that the idle scenarios can see it.
    idle = [] if any(arg.startswith("--connection-idle-seconds") for arg in extra) else [
        "--connection-idle-seconds", str(IDLE_SECONDS)]
    command = ([*tlserve_serve_command(repository, port, http_port=http_port), *idle, *extra]
               if system == "tlserve" else [sys.executable, "-m", "tlserve.bench.ceiling", "--port", str(port)])
    server = subprocess.Popen(launcher + command)
    try:
        _wait_answering(target, model)
        report: dict[str, Any] = {"system": system, "seconds": seconds, "server_nofile": server_nofile or "unchanged"}
        for name in scenarios:
            if name.startswith("http_") and not http_port:
                continue  # the no-op server has no HTTP port
            report[name] = scenario(target, model, server.pid, seconds, SCENARIOS[name], http_port)
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
                        help="start the server with this open-file limit, soft and hard (prlimit), e.g. 1024")
    parser.add_argument("--system", choices=["tlserve", "ceiling"], default="tlserve",
                        help="ceiling: the no-op gRPC server with tlserve's messages, as the reference")
    args, extra = parser.parse_known_args()
    run(args.repository, args.model, args.seconds, args.out, extra, args.scenarios, args.server_nofile, args.system)


if __name__ == "__main__":
    main()
