"""Arguments of `tlserve serve`, generated from `ServerSettings`. Imports nothing heavy."""

from __future__ import annotations

import argparse
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


def _run_serve(args: argparse.Namespace) -> int:
    from tlserve.server.workers import run

    return run(ServerSettings.from_sources(args), args.log_level)
