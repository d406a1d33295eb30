"""What tracing costs: gRPC calls at 16 callers with tracing off and on, side by side.

    python -m tlserve.bench.tracing_load --repository R --model M [--seconds 8] [--repeats 3] [--out FILE]

`tlserve serve` processes over the same repository: one as users run it by default (no
`--otlp-endpoint`), and one per `--sample-rates` value exporting traces over OTLP/gRPC to a
collector process that receives and discards them (the export's cost, not a collector's, is on
the server): every call traced (1) and one call in a hundred (0.01).
Rounds alternate between them; medians over the rounds. One text per call, closed loop,
the benchmark's own load generator.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from tlserve.bench.loadgen import LoadSpec, run_load
from tlserve.bench.systems import Running, _spawn, _wait, free_port, start_tlserve

TEXTS = ["a small domesticated feline", "a hand tool for driving nails", "a person who writes poems",
         "the act of running fast", "a large body of salt water", "a building where people live"]

SINK = '''
import sys
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        return trace_service_pb2.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
'''


def start_sink(logs: Path) -> tuple[Running, int]:
    port = free_port()
    process, log = _spawn("otlp-sink", [sys.executable, "-c", SINK, str(port)], logs)
    running = Running("otlp-sink", f"127.0.0.1:{port}", process, log)

    def ready() -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    return _wait(running, ready, 60), port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sample-rates", type=float, nargs="+", default=[1.0, 0.01])
    parser.add_argument("--logs", type=Path, default=Path("data/bench/logs"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    sink, sink_port = start_sink(args.logs)
    servers = {"off": start_tlserve("tlserve-untraced", args.repository, 1, args.logs)}
    for rate in args.sample_rates:
        servers[f"on, rate {rate:g}"] = start_tlserve(
            f"tlserve-traced-{rate:g}", args.repository, 1, args.logs,
            extra=("--otlp-endpoint", f"http://127.0.0.1:{sink_port}", "--trace-sample-rate", str(rate)))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    try:
        for repeat in range(args.repeats):
            for name, running in servers.items():
                spec = LoadSpec(target=running.target, model=args.model, shape="unary", texts_per_call=1,
                                texts=TEXTS, seconds=args.seconds, concurrency=args.concurrency)
                summary = run_load(spec).summary()
                rounds[name].append(summary)
                print(f"round {repeat + 1} tracing {name}: {summary}", flush=True)
    finally:
        for running in (*servers.values(), sink):
            running.stop()
    medians = {name: {metric: statistics.median(r[metric] for r in results) for metric in results[0]}
               for name, results in rounds.items()}
    report = {"concurrency": args.concurrency, "seconds": args.seconds, "repeats": args.repeats, "medians": medians,
              "over_off": {name: round(m["calls_per_s"] / medians["off"]["calls_per_s"], 3)
                           for name, m in medians.items() if name != "off"},
              "rounds": rounds}
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
