"""`tlserve soak`: a bounded soak test of a real server at half of its peak load.

Starts `tlserve serve` on a free loopback port, measures the peak rate with a short
closed-loop run of the benchmark's load generator (1 text per call, 32 callers), then
drives the server open-loop at `--load` (default half) of that rate for `--minutes`, one
load-generator run per `--interval`: latency counts from each call's intended send time,
so a stall shows instead of silently slowing the sender (no coordinated omission). Each
interval prints calls, errors, p50/p99 and the server's RSS; at the end, a summary with the
RSS growth after warm-up and the spread of p99, and a JSON file if `--out` is given.
Between intervals about a second passes while the next run's client processes start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlserve.bench.loadgen import LoadSpec, run_load
from tlserve.bench.systems import free_port, tlserve_serve_command

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


def run(repository: Path, model: str, minutes: float, load: float, interval: float, workers: int,
        out: Path | None, peak_seconds: float = 10.0) -> int:
    port = free_port()
    target = f"127.0.0.1:{port}"
    server = subprocess.Popen(tlserve_serve_command(repository, port, 0, workers))
    intervals: list[Interval] = []
    peak = rate = 0.0
    try:
        from tlserve.client import Classifier

        with Classifier(target) as client:
            if client.wait_until_serving(60) != "SERVING":
                print("soak: the server did not become SERVING", file=sys.stderr)
                return 1
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        pids = [server.pid, *map(int, children)]

        def spec(seconds: float, **shape: Any) -> LoadSpec:
            return LoadSpec(target=target, model=model, shape="unary", texts_per_call=1, texts=TEXTS,
                            seconds=seconds, warmup_seconds=0.2, timeout=5.0, **shape)

        peak = run_load(spec(peak_seconds, concurrency=32)).calls_per_second
        rate = peak * load
        print(f"peak {peak:.0f} calls/s (closed loop, 32 in flight); soaking at {rate:.0f} calls/s "
              f"for {minutes:g} min", flush=True)
        start = time.monotonic()
        while time.monotonic() - start < minutes * 60:
            seconds = min(interval, minutes * 60 - (time.monotonic() - start))
            summary = run_load(spec(max(1.0, seconds), rate=rate)).summary()
            row = Interval(round(time.monotonic() - start, 1), int(summary["calls_per_s"] * seconds),
                           int(summary["errors"]), summary["p50_ms"], summary["p99_ms"], round(_rss_mb(pids), 1))
            intervals.append(row)
            print(json.dumps(asdict(row)), flush=True)
    finally:
        server.terminate()
        code = server.wait(60)
    errors = sum(row.errors for row in intervals)
    warm = intervals[min(1, len(intervals) - 1)].rss_mb if intervals else 0.0
    last = intervals[-1].rss_mb if intervals else 0.0
    p99s = [row.p99_ms for row in intervals[1:]] or [0.0]
    result: dict[str, Any] = {
        "minutes": minutes, "peak_calls_per_s": round(peak, 1), "soak_calls_per_s": round(rate, 1),
        "calls": sum(row.calls for row in intervals), "errors": errors,
        "rss_after_warmup_mb": warm, "rss_end_mb": last,
        "rss_growth_after_warmup": round((last - warm) / warm, 4) if warm else None,
        "p99_ms_min": min(p99s), "p99_ms_median": sorted(p99s)[len(p99s) // 2], "p99_ms_max": max(p99s),
        "server_exit_code": code,
    }
    print(json.dumps(result, indent=1))
    if out is not None:
        out.write_text(json.dumps({"summary": result, "intervals": [asdict(row) for row in intervals]}, indent=1))
    return 0 if errors == 0 and code == 0 else 1
