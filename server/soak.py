"""`tlserve soak`: a bounded soak test of a real server at half of its peak load.

Starts `tlserve serve` on a free loopback port, measures the peak rate with a short
closed-loop run (1 text per call), then sends calls open-loop at `--load` (default half)
of that rate for `--minutes`. Latency is measured from each call's intended send time, so
a stall shows up in the figures instead of silently slowing the sender (no coordinated
omission). Every `--interval` seconds it prints calls, errors, p50/p99 and the server's
RSS; at the end, a summary with the RSS growth after warm-up and the spread of p99, and a
JSON file if `--out` is given.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TEXTS = [
    "a domesticated carnivorous mammal with soft fur", "a hand tool with a heavy head for driving nails",
    "a person who writes computer programs", "a tall perennial woody plant with a trunk",
    "the act of moving quickly on foot", "a building where books are kept", "a sweet yellow fruit",
    "an instrument for measuring temperature", "the state of being happy", "a large body of salt water",
]


@dataclass
class Interval:
    second: float
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_mb: float
    codes: dict[str, int] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _peak_rate(stub: Any, request: Any, seconds: float, concurrency: int) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await stub.Classify(request, timeout=10)
            done += 1

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return done / seconds


async def _soak(target: str, model: str, minutes: float, load: float, interval: float, pids: list[int],
                max_outstanding: int, peak_seconds: float) -> tuple[float, float, list[Interval]]:
    import grpc

    from tlserve.client.v1 import classifier_pb2 as pb
    from tlserve.client.v1 import classifier_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        requests = [pb.ClassifyRequest(model=model, texts=[text]) for text in TEXTS]
        peak = await _peak_rate(stub, requests[0], peak_seconds, 32)
        rate = peak * load
        print(f"peak {peak:.0f} calls/s (closed loop, 32 in flight); soaking at {rate:.0f} calls/s "
              f"for {minutes:g} min", flush=True)
        latencies: list[float] = []
        codes: Counter[str] = Counter()
        outstanding = 0
        intervals: list[Interval] = []

        async def one(request: Any, intended: float) -> None:
            nonlocal outstanding
            try:
                await stub.Classify(request, timeout=5)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
            finally:
                latencies.append(time.perf_counter() - intended)
                outstanding -= 1

        start = time.perf_counter()
        end = start + minutes * 60
        next_report = start + interval
        sent = 0
        tasks: set[asyncio.Task[None]] = set()
        while (now := time.perf_counter()) < end:
            intended = start + sent / rate
            if intended > now:
                await asyncio.sleep(intended - now)
            if outstanding >= max_outstanding:
                codes["CLIENT_OVERFLOW"] += 1  # the server fell this far behind: an error, not a wait
            else:
                outstanding += 1
                task = asyncio.ensure_future(one(requests[sent % len(requests)], intended))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent += 1
            if time.perf_counter() >= next_report:
                errors = sum(n for code, n in codes.items() if code != "OK")
                row = Interval(round(time.perf_counter() - start, 1), sum(codes.values()), errors,
                               round(_percentile(latencies, 0.5) * 1e3, 3),
                               round(_percentile(latencies, 0.99) * 1e3, 3), round(_rss_mb(pids), 1), dict(codes))
                intervals.append(row)
                print(json.dumps(asdict(row)), flush=True)
                latencies, codes = [], Counter()
                next_report += interval
        await asyncio.gather(*tasks)
    return peak, rate, intervals


def run(repository: Path, model: str, minutes: float, load: float, interval: float, workers: int,
        out: Path | None, extra: list[str], peak_seconds: float = 10.0) -> int:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "serve", "--repository", str(repository),
         "--port", str(port), "--metrics-port", "0", "--workers", str(workers), *extra],
    )
    try:
        from tlserve.client import Classifier

        with Classifier(f"127.0.0.1:{port}") as client:
            if client.wait_until_serving(60) != "SERVING":
                print("soak: the server did not become SERVING", file=sys.stderr)
                return 1
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        pids = [server.pid, *map(int, children)]
        peak, rate, intervals = asyncio.run(
            _soak(f"127.0.0.1:{port}", model, minutes, load, interval, pids, 1000, peak_seconds))
    finally:
        server.terminate()
        code = server.wait(60)
    errors = sum(row.errors for row in intervals)
    warm = intervals[min(1, len(intervals) - 1)].rss_mb if intervals else 0.0
    last = intervals[-1].rss_mb if intervals else 0.0
    p99s = [row.p99_ms for row in intervals[1:]] or [0.0]
    summary: dict[str, Any] = {
        "minutes": minutes, "peak_calls_per_s": round(peak, 1), "soak_calls_per_s": round(rate, 1),
        "calls": sum(row.calls for row in intervals), "errors": errors,
        "rss_after_warmup_mb": warm, "rss_end_mb": last,
        "rss_growth_after_warmup": round((last - warm) / warm, 4) if warm else None,
        "p99_ms_min": min(p99s), "p99_ms_median": sorted(p99s)[len(p99s) // 2], "p99_ms_max": max(p99s),
        "server_exit_code": code,
    }
    print(json.dumps(summary, indent=1))
    if out is not None:
        out.write_text(json.dumps({"summary": summary, "intervals": [asdict(row) for row in intervals]}, indent=1))
    return 0 if errors == 0 and code == 0 else 1
