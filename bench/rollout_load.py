"""Steady load through a rollout: one-text calls at a fixed rate over the client's DNS round-robin mode.

    python -m tlserve.bench.rollout_load --target tlserve:50051 --model wordnet [--rate 250]

Sends calls open-loop at `--rate` per second (each its own task, so a slow call does not slow
the pace) until SIGTERM or SIGINT, then prints a JSON summary: calls, failures by status code,
the rate achieved, and which model version answered, per second and in the last second. The
channel re-resolves the name at most once a second (`grpc.dns_min_time_between_resolutions_ms`),
so replicas that join during the rollout get calls soon after a connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import sys
from typing import Any


async def run(target: str, model: str, rate: float) -> dict[str, Any]:
    import grpc

    from tlserve.client.classifier import channel_options
    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    options = [*channel_options(round_robin=True), ("grpc.dns_min_time_between_resolutions_ms", 1000)]
    target = target if "://" in target or target.startswith("dns:") else f"dns:///{target}"
    failures: collections.Counter[str] = collections.Counter()
    versions: dict[int, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        request = pb.ClassifyRequest(model=model, texts=["a small domesticated feline"])
        started = loop.time()

        async def call() -> None:
            sent = loop.time()
            try:
                response = await stub.Classify(request, timeout=10)
            except grpc.aio.AioRpcError as exc:
                failures[exc.code().name] += 1
                return
            latencies.append(loop.time() - sent)
            versions[int(sent - started)][response.version] += 1

        tasks: set[asyncio.Task[None]] = set()
        due = started
        while not stop.is_set():
            task = asyncio.ensure_future(call())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            due += 1.0 / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - loop.time()))
        seconds = loop.time() - started
        if tasks:
            await asyncio.wait(tasks)
    answered = len(latencies)
    last = max(versions) if versions else 0
    ordered = sorted(latencies)
    return {
        "seconds": round(seconds, 1), "calls": answered + sum(failures.values()), "answered": answered,
        "failed": sum(failures.values()), "failed_codes": dict(failures),
        "calls_per_second": round((answered + sum(failures.values())) / seconds, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2) if ordered else None,
        "p99_ms": round(ordered[int(len(ordered) * 0.99)] * 1000, 2) if ordered else None,
        "versions_per_second": {str(s): dict(v) for s, v in sorted(versions.items())},
        "versions_last_second": sorted(versions[last]) if versions else [],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="tlserve:50051")
    parser.add_argument("--model", required=True)
    parser.add_argument("--rate", type=float, default=250.0)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.target, args.model, args.rate)), indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
