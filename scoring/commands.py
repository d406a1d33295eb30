"""Arguments of `tlserve score`. Imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

SCORE_EXAMPLES = """examples:
  tlserve score --model models/wordnet --input tickets.parquet --output scored.parquet
  tlserve score --model models/wordnet:3 --input backlog.csv --id-column ticket_id --output scored.parquet --workers 2
  tlserve score --engine ray --address 10.0.0.5:6379 --workers 16 --model /shared/models/wordnet \
      --input /shared/backlog.parquet --output /shared/scored.parquet
"""


def register(verbs: Any) -> None:
    score = verbs.add_parser(
        "score", help="label a Parquet, CSV or JSONL file of texts offline with a model's own scorer",
        epilog=SCORE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("--model", required=True, help="REPOSITORY/MODEL[:VERSION] (newest version without :VERSION)")
    score.add_argument("--input", type=Path, required=True, help="Parquet, CSV or JSONL file")
    score.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    score.add_argument("--format", dest="input_format", choices=["parquet", "csv", "tsv", "jsonl"],
                       help="input format (default: from the suffix)")
    score.add_argument("--text-column", default="text")
    score.add_argument("--id-column", help="column kept as `id` in the output")
    score.add_argument("--top-k", type=int, default=3, help="labels per text (0: all)")
    score.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: worker processes on this machine; ray: Ray Data actors (pip install "
                            "'tlserve[ray]'), on a Ray instance of the job's own or the cluster at --address")
    score.add_argument("--address", help="ray: the Ray cluster to join (HOST:PORT, or auto); the model repository "
                                         "and the output's folder must be at the same path on every node")
    score.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="scoring processes (local) or actors (ray); default: cores")
    score.add_argument("--batch-size", type=int, default=512, help="texts per batch")
    score.add_argument("--max-text-bytes", type=int, default=16_384,
                       help="longer texts are bad rows, as the server refuses them")
    score.add_argument("--errors", type=Path, help="bad rows as JSON lines (default: OUTPUT stem + .errors.jsonl)")
    score.add_argument("--no-progress", dest="progress", action="store_false")
    score.set_defaults(run=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from tlserve.scoring.job import ScoreJob, run

    summary = run(ScoreJob(model=args.model, input=args.input, output=args.output, input_format=args.input_format,
                           text_column=args.text_column, id_column=args.id_column, top_k=args.top_k,
                           engine=args.engine, address=args.address, workers=args.workers,
                           batch_size=args.batch_size, max_text_bytes=args.max_text_bytes,
                           errors=args.errors, progress=args.progress))
    print(json.dumps(summary, indent=1))
    return 0
