"""Memory of a running tlserve: RSS and PSS per process, from /proc/PID/smaps_rollup.

    python bench/memory_footprint.py --repository REPO [--workers 2] [--texts FILE]

Starts `tlserve serve` on a free loopback port, classifies every text of --texts (one per
line; default: the WordNet task, so the store's pages are really touched), reads the
memory of the server and its workers, stops the server and prints JSON. PSS splits each
shared page between the processes that map it, so the PSS sum is the real footprint.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
from pathlib import Path

from tlserve.bench.systems import free_port, tlserve_serve_command
from tlserve.client import Classifier


def rollup(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return {"rss_kb": fields["Rss"], "pss_kb": fields["Pss"]}


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def measure(repository: Path, workers: int, texts: list[str], models: list[str]) -> dict[str, object]:
    port = free_port()
    server = subprocess.Popen(tlserve_serve_command(repository, port, workers=workers))
    try:
        target = f"127.0.0.1:{port}"
        with Classifier(target) as client:
            if client.wait_until_serving(60) != "SERVING":
                raise RuntimeError("server not SERVING after 60 s")
        for _ in range(4 * workers):  # several connections, so that every worker gets calls
            with Classifier(target) as client:
                for model in models:
                    for start in range(0, len(texts), 256):
                        client.classify(texts[start : start + 256], model=model)
        pids = [server.pid, *children(server.pid)]
        per_process = {pid: rollup(pid) for pid in pids}
    finally:
        server.terminate()
        server.wait(30)
    return {
        "workers": workers,
        "models": models,
        "processes": per_process,
        "total_rss_mb": round(sum(p["rss_kb"] for p in per_process.values()) / 1024, 1),
        "total_pss_mb": round(sum(p["pss_kb"] for p in per_process.values()) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--models", nargs="+", required=True, help="models to call")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--texts", type=Path, default=Path("data/tasks/wordnet-nouns-top10.csv"))
    parser.add_argument("--limit", type=int, default=20000)
    args = parser.parse_args()
    with open(args.texts, encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][: args.limit]
    results = []
    for workers in args.workers:
        for count in range(1, len(args.models) + 1):
            result = measure(args.repository, workers, texts, args.models[:count])
            print(json.dumps({k: v for k, v in result.items() if k != "processes"}), flush=True)
            results.append(result)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
