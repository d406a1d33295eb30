"""Many task heads in one server over one vector store: memory, start-up and latency as heads are added.

    python -m tlserve.bench.many_heads --bundle R/M/V [--heads 1 10 100 1000] [--out FILE]

Copies one version folder under N model names (`head-0000`, ...) into a fresh repository that
shares the bundle's vector store, starts `tlserve serve` on it, and measures for each N: the
time from process start to SERVING, the server's PSS and RSS once serving, and what each head
beyond the first costs (PSS difference over the added heads). At the largest N it also runs 16
concurrent callers for a few seconds twice, with every call on one head and with calls spread
over 100 heads, and reports p50/p99 for both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from tlserve.bench.memory_footprint import rollup
from tlserve.bench.systems import start_tlserve
from tlserve.core.bundle import STORES_DIR
from tlserve.core.vector_store import MANIFEST

TEXTS = ["a small domesticated feline", "a hand tool for driving nails", "a person who writes poems",
         "the act of running fast", "a large body of salt water"]


def make_repository(bundle: Path, heads: int, out: Path) -> None:
    """`heads` copies of the version folder `bundle` (files hard-linked, manifests renamed) beside its store."""
    source_repository = bundle.parent.parent
    if out.exists():
        shutil.rmtree(out)
    (out / STORES_DIR).mkdir(parents=True)
    for store in (source_repository / STORES_DIR).iterdir():
        shutil.copytree(store, out / STORES_DIR / store.name, copy_function=os.link)
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    for i in range(heads):
        name = f"head-{i:04d}"
        target = out / name / bundle.name
        shutil.copytree(bundle, target, copy_function=os.link)
        (target / MANIFEST).unlink()
        (target / MANIFEST).write_text(json.dumps({**manifest, "model": name}, indent=1), encoding="utf-8")


async def latency(target: str, models: list[str], seconds: float = 5.0, concurrency: int = 16) -> dict[str, float]:
    import grpc
    import numpy as np

    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def caller(index: int) -> None:
            i = index
            while loop.time() < end:
                request = pb.ClassifyRequest(model=models[i % len(models)], texts=[TEXTS[i % len(TEXTS)]])
                sent = loop.time()
                await stub.Classify(request, timeout=30)
                latencies.append(loop.time() - sent)
                i += concurrency

        for model in models:  # each head answers once before timing (first calls build response encoders)
            await stub.Classify(pb.ClassifyRequest(model=model, texts=[TEXTS[0]]), timeout=60)
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    values = np.array(latencies) * 1000
    return {"calls": len(values), "calls_per_second": round(len(values) / seconds),
            "p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def measure(bundle: Path, heads: int, work: Path, spread: bool) -> dict[str, Any]:
    repository = work / f"repo-{heads}"
    make_repository(bundle, heads, repository)
    started = time.perf_counter()
    server = start_tlserve(f"heads-{heads}", repository, 1, work / "logs", timeout=1800)
    try:
        serving = time.perf_counter() - started
        memory = rollup(server.process.pid)
        result: dict[str, Any] = {"heads": heads, "seconds_to_serving": round(serving, 2),
                                  "pss_mb": round(memory["pss_kb"] / 1024, 1),
                                  "rss_mb": round(memory["rss_kb"] / 1024, 1)}
        if spread:
            names = [f"head-{i:04d}" for i in range(heads)]
            result["one_head"] = asyncio.run(latency(server.target, names[:1]))
            result["spread_over_100_heads"] = asyncio.run(latency(server.target, names[:100]))
        return result
    finally:
        server.stop()
        shutil.rmtree(repository, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="a version folder R/M/V")
    parser.add_argument("--heads", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--work", type=Path, default=Path("data/bench/many-heads"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    runs = [measure(args.bundle, n, args.work, n == max(args.heads) and n >= 100) for n in args.heads]
    base = runs[0]
    for run in runs[1:]:
        run["pss_mb_per_extra_head"] = round((run["pss_mb"] - base["pss_mb"]) / (run["heads"] - base["heads"]), 3)
    mode = json.loads((args.bundle / MANIFEST).read_text(encoding="utf-8"))["mode"]
    results = {"bundle": str(args.bundle), "mode": mode, "runs": runs}
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
