"""HTTP/JSON throughput and latency: tlserve's HTTP port against MLServer's REST endpoint and a no-op server.

    python -m tlserve.bench.http_load --bundle R/M/V [--seconds 8] [--repeats 3] [--out FILE]

Same load generator, same model, one run, rounds interleaved (tlserve, MLServer, no-op, ...) so
drifts of a shared machine fall on every system alike; medians over the rounds. Each point is
a closed loop of `c` callers (1 and 16) in 2 client processes (aiohttp, kept-alive connections),
one text per call, the Open Inference Protocol's JSON body
``{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [...]}]}`` for all three:

- ``tlserve``: `tlserve serve` (gRPC and HTTP in one process, as users run it), POST /v2/models/M/infer;
- ``tlserve-v1``: the same server, POST /v1/models/M:classify (the JSON mirror);
- ``mlserver``: MLServer 1.7's REST endpoint (FastAPI/uvicorn) with a runtime that runs tlserve's own
  scorer (`bench/mlserver_runtime.py`), its adaptive batching on;
- ``tlserve-cached`` (not run unless named): the same server with each `Scorer.predict` answered
  from a cache (`bench/cached_model_server.py`): what serving costs without the model's own work;
- ``noop``: an aiohttp server on the same stack (aiohttp, orjson) that reads and parses the body and
  answers a fixed JSON: the ceiling of the HTTP stack itself on this machine.

For tlserve's servers each round also reports what a call cost inside the server (``server_us``:
mean microseconds of the whole HTTP call and of building its answer, and of encoding and
onnxruntime per batch, which is one call at c=1), read from the server's own metrics before
and after the round. Beside the same stages timed back to back in the benchmark's process once
the servers stopped (``back_to_back_us``), they show what running between other work (parsing,
the event loop, the client on the other core) does to the model's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.bench.systems import (
    Running,
    Timings,
    _spawn,
    _wait,
    free_port,
    mean_between,
    scrape,
    shown,
    start_mlserver,
    start_tlserve,
    timings,
)

CONTEXT = multiprocessing.get_context("spawn")
TEXTS = ["a small domesticated feline", "a hand tool for driving nails", "a person who writes poems",
         "the act of running fast", "a large body of salt water", "a building where people live"]


def _body(model: str, text: str) -> bytes:
    return json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}).encode()


async def _client(url: str, kind: str, model: str, callers: int, seconds: float, warmup: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=callers, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if kind == "v1":
            path = f"{url}/v1/models/{model}:classify"
            bodies = [json.dumps({"texts": [t]}).encode() for t in TEXTS]
        else:
            path = f"{url}/v2/models/{model}/infer"
            bodies = [_body(model, t) for t in TEXTS]
        headers = {"Content-Type": "application/json"}
        begin = time.perf_counter() + warmup
        end = begin + seconds

        async def caller(i: int) -> None:
            nonlocal errors
            n = i
            while (now := time.perf_counter()) < end:
                n += 1
                async with session.post(path, data=bodies[n % len(bodies)], headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if now >= begin:
                    if ok:
                        latencies.append((done - now) * 1000)
                    else:
                        errors += 1

        cpu = time.process_time()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        cpu = time.process_time() - cpu
    return {"latencies": latencies, "errors": errors, "cpu": cpu}


def _client_process(args: tuple[Any, ...], out: Any) -> None:
    out.put(asyncio.run(_client(*args)))


def server_us(before: Timings, after: Timings) -> dict[str, float]:
    """Mean microseconds, between two `timings` readings, of the HTTP calls and of building their answers,
    and per batch of encoding and onnxruntime."""
    out = {}
    for key in after:
        if key.startswith("call:http:") or key in ("encode", "inference", "respond"):
            mean, count = mean_between(before, after, key)
            if count:
                out["call" if key.startswith("call:") else key] = round(mean * 1e6, 1)
    return out


def back_to_back_us(bundle: Path, calls: int = 3000) -> dict[str, float]:
    """Median microseconds of encoding and onnxruntime for one text, `Scorer.predict` called back to back in
    this process: the model's own cost with its code and data in the caches."""
    from tlserve.core.scorer import Scorer

    scorer = Scorer.open(bundle)
    encode, inference = [], []
    for n in range(calls):
        prediction = scorer.predict([TEXTS[n % len(TEXTS)]])
        encode.append(prediction.encode_seconds)
        inference.append(prediction.inference_seconds)
    return {"encode": round(statistics.median(encode) * 1e6, 1),
            "inference": round(statistics.median(inference) * 1e6, 1)}


def measure(url: str, kind: str, model: str, concurrency: int, seconds: float, processes: int = 2) -> dict[str, Any]:
    out = CONTEXT.Queue()
    processes = min(processes, concurrency)
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    workers = [CONTEXT.Process(target=_client_process, args=((url, kind, model, share, seconds, 1.0), out),
                               daemon=True) for share in shares]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=seconds + 120) for _ in workers]
    for worker in workers:
        worker.join(10)
    latencies = np.array([x for r in results for x in r["latencies"]] or [0.0])
    calls = sum(len(r["latencies"]) for r in results)
    return {"calls_per_s": round(calls / seconds, 1), "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3), "errors": sum(r["errors"] for r in results),
            "client_cpu_cores": round(sum(r["cpu"] for r in results) / (seconds + 1.0), 2)}


NOOP_SERVER = '''
import sys
import orjson
from aiohttp import web

ANSWER = orjson.dumps({"model_name": "m", "model_version": "1", "outputs": [
    {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["noun.animal"]}]})

async def infer(request):
    orjson.loads(await request.read())
    return web.Response(body=ANSWER, content_type="application/json")

app = web.Application()
app.router.add_post("/v2/models/{model}/infer", infer)
app.router.add_post("/v1/models/{model}:classify", infer)
app.router.add_get("/v2/health/ready", lambda request: web.json_response({"ready": True}))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
'''


def start_noop(logs: Path) -> tuple[Running, str]:
    port = free_port()
    process, log = _spawn("noop-http", [sys.executable, "-c", NOOP_SERVER, str(port)], logs)
    running = Running("noop-http", f"127.0.0.1:{port}", process, log, http_port=port)

    def ready() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return response.status == 200

    return _wait(running, ready, 60), f"http://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a version folder R/M/V")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--systems", nargs="+", default=["tlserve", "tlserve-v1", "mlserver", "noop"])
    parser.add_argument("--logs", type=Path, default=Path("data/bench/logs"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.logs = args.logs.resolve()  # MLServer runs in a folder of its own
    args.bundle = args.bundle.resolve()
    args.logs.mkdir(parents=True, exist_ok=True)
    model = args.bundle.parent.name
    servers: dict[str, tuple[Running, str]] = {}
    try:
        if {"tlserve", "tlserve-v1"} & set(args.systems):
            running = start_tlserve("tlserve-http", args.bundle.parent.parent, 1, args.logs)
            servers["tlserve"] = servers["tlserve-v1"] = (running, f"http://127.0.0.1:{running.http_port}")
        if "tlserve-cached" in args.systems:
            running = start_tlserve("tlserve-cached", args.bundle.parent.parent, 1, args.logs,
                                    entry="tlserve.bench.cached_model_server")
            servers["tlserve-cached"] = (running, f"http://127.0.0.1:{running.http_port}")
        if "mlserver" in args.systems:
            running = start_mlserver(args.bundle, model, args.logs / "mlserver-work", args.logs)
            servers["mlserver"] = (running, f"http://127.0.0.1:{running.http_port}")
        if "noop" in args.systems:
            servers["noop"] = start_noop(args.logs)
        rounds: dict[str, list[dict[str, Any]]] = {}
        for repeat in range(args.repeats):
            for concurrency in args.concurrency:
                for system in args.systems:
                    running, url = servers[system]
                    kind = "v1" if system == "tlserve-v1" else "v2"
                    before = timings(scrape(running.metrics_port), model) if running.metrics_port else {}
                    result = measure(url, kind, model, concurrency, args.seconds)
                    if running.metrics_port:
                        inside = server_us(before, timings(scrape(running.metrics_port), model))
                        if system == "tlserve-cached":  # its stage timings are those of the first, cached answer
                            inside = {k: v for k, v in inside.items() if k not in ("encode", "inference")}
                        result["server_us"] = inside
                    rounds.setdefault(f"{system} c={concurrency}", []).append(result)
                    print(f"round {repeat + 1} {system} c={concurrency}: {result}", flush=True)
    finally:
        stopped = {id(running): running for running, _ in servers.values()}
        for running in stopped.values():
            running.stop()
    medians: dict[str, dict[str, Any]] = {
        key: {metric: statistics.median(r[metric] for r in results) for metric in results[0] if metric != "server_us"}
        for key, results in rounds.items()}
    for key, results in rounds.items():
        per_round: list[dict[str, float]] = [r["server_us"] for r in results if r.get("server_us")]
        if per_round:
            medians[key]["server_us"] = {name: statistics.median(t[name] for t in per_round if name in t)
                                         for name in per_round[0]}
    ratios = {}
    for concurrency in args.concurrency:
        for system, peer in (("tlserve", "mlserver"), ("tlserve", "noop"), ("tlserve-cached", "noop")):
            tl = medians.get(f"{system} c={concurrency}")
            other = medians.get(f"{peer} c={concurrency}")
            if tl and other and other["calls_per_s"]:
                ratios[f"{system} / {peer} c={concurrency}"] = round(tl["calls_per_s"] / other["calls_per_s"], 2)
    # After the servers stopped, so nothing else runs beside it.
    back_to_back = back_to_back_us(args.bundle) if {"tlserve", "tlserve-v1"} & set(args.systems) else {}
    report = {"bundle": shown(args.bundle), "seconds": args.seconds, "repeats": args.repeats,
              "medians": medians, "ratios": ratios, "back_to_back_us": back_to_back, "rounds": rounds,
              "machine": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() + " cores"}
    print(json.dumps({"medians": medians, "ratios": ratios, "back_to_back_us": back_to_back}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
