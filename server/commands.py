"""Arguments of `tlserve serve`, generated from `ServerSettings`. Imports nothing heavy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tlserve.server.settings import ServerSettings

EXAMPLES = """examples:
  tlserve serve --repository models
  tlserve serve --repository models --workers 2 --max-batch-size 128 --max-queue-delay-us 500
  TLSERVE_REPOSITORY=/models TLSERVE_HOST=0.0.0.0 tlserve serve
"""


def register(verbs: Any) -> None:
    serve = verbs.add_parser(
        "serve", help="serve a model repository over gRPC (health, reflection, metrics)",
        description="Serve every model of a repository over gRPC. Every flag can also be set by the "
        "environment variable shown in its help.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ServerSettings.add_arguments(serve)
    serve.set_defaults(run=_run_serve)

    soak = verbs.add_parser(
        "soak", help="bounded soak test: a real server at half its peak load, errors, p99 and RSS over time",
        epilog="example: tlserve soak --repository data/models --model wordnet --minutes 10 --out soak.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    soak.add_argument("--repository", type=Path, required=True)
    soak.add_argument("--model", required=True)
    soak.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    soak.add_argument("--load", type=float, default=0.5, help="share of the measured peak rate (default 0.5)")
    soak.add_argument("--interval", type=float, default=30.0, help="seconds per report line (default 30)")
    soak.add_argument("--workers", type=int, default=1)
    soak.add_argument("--out", type=Path, help="write the intervals and summary as JSON")
    soak.add_argument("--peak-seconds", type=float, default=10.0, help="length of the peak measurement")
    soak.set_defaults(run=_run_soak)


def _run_soak(args: argparse.Namespace) -> int:
    from tlserve.server.soak import run

    return run(args.repository, args.model, args.minutes, args.load, args.interval, args.workers, args.out, [],
               args.peak_seconds)


def _run_serve(args: argparse.Namespace) -> int:
    from tlserve.server.app import run

    return run(ServerSettings.from_sources(args), args.log_level)
