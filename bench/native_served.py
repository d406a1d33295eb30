"""Served, one text per call: the compiled encoder against the Python encoder, over gRPC and HTTP.

    python -m tlserve.bench.native_served --repository data/models --model wordnet --rounds 3 \\
        --out bench/results/native-served.json

Each round starts fresh servers (a new process per encoder, ``TLSERVE_ENCODER=native`` or
``python``, one worker, gRPC and HTTP on) and the no-op servers (`tlserve.bench.ceiling` for
gRPC, an aiohttp server for HTTP), then measures closed loops of 1 and 16 callers, one text per
call: gRPC native unary, HTTP the Open Inference Protocol's JSON body. Which encoder goes first
alternates by round, so a shared machine's drift falls on both alike. Reports per round and the
medians: calls/s, p50/p99, the ratio native / Python, and each against its no-op server.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tlserve.bench.http_load import measure as measure_http
from tlserve.bench.http_load import start_noop
from tlserve.bench.loadgen import LoadSpec, run_load
from tlserve.bench.systems import start_ceiling, start_tlserve

ENCODERS = ("python", "native")


def _grpc(target: str, model: str, texts: list[str], callers: int, seconds: float) -> dict[str, Any]:
    spec = LoadSpec(target=target, model=model, shape="unary", texts_per_call=1, texts=texts, seconds=seconds,
                    concurrency=callers, timeout=30.0)
    return run_load(spec).summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=Path("data/tasks/wordnet-nouns-top10.csv"),
                        help="CSV with a text column: the texts sent")
    load = parser.add_argument_group("load")
    load.add_argument("--rounds", type=int, default=3, help="fresh servers per round (default 3)")
    load.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point (default 6)")
    load.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="callers (default 1 16)")
    output = parser.add_argument_group("output")
    output.add_argument("--logs", type=Path, default=Path("data/bench/logs"), help="server logs")
    output.add_argument("--out", type=Path, help="JSON result")
    args = parser.parse_args(argv)
    with args.data.open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row, _ in zip(csv.DictReader(handle), range(2000), strict=False)]
    rounds: dict[str, list[dict[str, Any]]] = {}
    for number in range(args.rounds):
        order = ENCODERS if number % 2 == 0 else ENCODERS[::-1]
        for system in (*order, "noop"):
            if system == "noop":
                grpc_server = start_ceiling("noop-grpc", 1, 10, args.logs)
                http_server, url = start_noop(args.logs)
                servers = [grpc_server, http_server]
                grpc_target, model, kind = grpc_server.target, "noop", "v2"
            else:
                server = start_tlserve(f"tlserve-{system}", args.repository, 1, args.logs,
                                       env={"TLSERVE_ENCODER": system})
                servers = [server]
                grpc_target, url, model, kind = (server.target, f"http://127.0.0.1:{server.http_port}", args.model,
                                                 "v2")
            try:
                for callers in args.concurrency:
                    for protocol in ("grpc", "http"):
                        if protocol == "grpc":
                            result = _grpc(grpc_target, model, texts, callers, args.seconds)
                        else:
                            result = measure_http(url, kind, model if system != "noop" else "m", callers,
                                                  args.seconds)
                        rounds.setdefault(f"{protocol} c={callers} {system}", []).append(result)
                        print(f"round {number + 1} {protocol} c={callers} {system}: {result['calls_per_s']} calls/s, "
                              f"p50 {result['p50_ms']} ms, errors {result['errors']}", flush=True)
            finally:
                for running in servers:
                    running.stop()
    medians = {key: statistics.median(r["calls_per_s"] for r in results) for key, results in rounds.items()}
    ratios: dict[str, float] = {}
    for callers in args.concurrency:
        for protocol in ("grpc", "http"):
            key = f"{protocol} c={callers}"
            python, native, noop = (medians[f"{key} {s}"] for s in ("python", "native", "noop"))
            ratios[f"{key} native / python"] = round(native / python, 3)
            ratios[f"{key} native / noop"] = round(native / noop, 3)
            ratios[f"{key} python / noop"] = round(python / noop, 3)
            per_round = [n["calls_per_s"] / p["calls_per_s"] for n, p in
                         zip(rounds[f"{key} native"], rounds[f"{key} python"], strict=True)]
            ratios[f"{key} native / python per round"] = [round(r, 3) for r in per_round]  # type: ignore[assignment]
    report = {"repository": str(args.repository), "model": args.model, "seconds": args.seconds,
              "rounds": args.rounds, "medians_calls_per_s": medians, "ratios": ratios, "per_round": rounds}
    print(json.dumps({"medians_calls_per_s": medians, "ratios": ratios}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
