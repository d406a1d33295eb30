"""`tlserve bench`: arguments only; the harness is imported when the verb runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  tlserve bench --quick                          # about 3 minutes: fewer points, one repeat
  tlserve bench                                  # the full run (README): 3 repeats, c = 1, 4, 16, 64
  tlserve bench --systems tlserve ceiling --seconds 10 --out /tmp/b.json
"""


def register(verbs: Any) -> None:
    parser = verbs.add_parser("bench", help="benchmark tlserve against the gRPC and compute ceilings, the naive "
                              "approach, MLServer and fastText", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the ~3 minute preset")
    parser.add_argument("--out", type=Path, help="JSON result (default bench/results/bench[-quick].json)")
    parser.add_argument("--data", type=Path, help="data folder (default ./data)")
    parser.add_argument("--seconds", type=float, help="measured seconds per point")
    parser.add_argument("--repeats", type=int, help="runs per point; medians are reported")
    parser.add_argument("--concurrency", type=int, nargs="+", help="closed-loop sweep")
    parser.add_argument("--workers", type=int, help="processes of the multi-process servers (default 2)")
    parser.add_argument("--systems", nargs="+", choices=["tlserve", "ceiling", "naive", "mlserver", "fasttext"])
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS/PSS measurements")
    parser.set_defaults(run=_run)

    soak = _served_model_verb(verbs, "soak", "bounded soak test: a real server at half its peak load, errors, p99 "
                              "and RSS over time", "--minutes 10 --out soak.json")
    soak.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    soak.add_argument("--load", type=float, default=0.5, help="share of the measured peak rate (default 0.5)")
    soak.add_argument("--interval", type=float, default=30.0, help="seconds per report line (default 30)")
    soak.add_argument("--workers", type=int, default=1)
    soak.add_argument("--out", type=Path, help="write the intervals and summary as JSON")
    soak.add_argument("--peak-seconds", type=float, default=10.0, help="length of the peak measurement")
    soak.set_defaults(run=_run_soak)

    path = _served_model_verb(verbs, "request-path", "one text's path through a real server, module by module, "
                              "for each protocol", "")
    path.add_argument("--out", type=Path, help="also write the paths as JSON")
    path.set_defaults(run=_run_request_path)


def _served_model_verb(verbs: Any, name: str, help: str, example_flags: str) -> argparse.ArgumentParser:
    """A verb that serves one model of a repository (its --repository and --model)."""
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example: tlserve {name} --repository data/models --model wordnet {example_flags}".rstrip())
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    return parser


def _run_request_path(args: argparse.Namespace) -> int:
    from tlserve.bench.request_path import run

    return run(args.repository, args.model, args.out)


def _run_soak(args: argparse.Namespace) -> int:
    from tlserve.bench.soak import run

    return run(args.repository, args.model, args.minutes, args.load, args.interval, args.workers, args.out,
               args.peak_seconds)


def _run(args: argparse.Namespace) -> int:
    from tlserve.bench.harness import BenchConfig, run

    config = BenchConfig(quick=args.quick)
    if args.quick:
        config.apply_quick()  # first, so explicit flags below still win
    config.out = args.out or config.out.with_name("bench-quick.json" if args.quick else "bench.json")
    for name in ("data", "seconds", "repeats", "concurrency", "workers", "systems"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    config.memory = not args.no_memory
    report = run(config)
    return 0 if all(check["met"] for check in report["acceptance"]) else 1
