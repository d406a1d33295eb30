"""Arguments of `tlserve score`. Imports nothing heavy."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from tlserve.core.help_format import HelpFormatter

SCORE_EXAMPLES = """examples:
  tlserve score --model models/wordnet --input tickets.parquet --output scored.parquet
  tlserve score --model models/wordnet:3 --input backlog.csv --id-column ticket_id --output scored.parquet --workers 2
  tlserve score --engine ray --address 10.0.0.5:6379 --workers 16 --model /shared/models/wordnet \\
      --input backlog.parquet --output scored.parquet
"""


def register(verbs: Any) -> None:
    score = verbs.add_parser(
        "score", help="label a Parquet, CSV, TSV or JSONL file of texts offline with a model's own scorer",
        epilog=SCORE_EXAMPLES, formatter_class=HelpFormatter,
    )
    score.add_argument("--model", required=True, help="REPOSITORY/MODEL[:VERSION] (newest version without :VERSION)")
    score.add_argument("--input", type=Path, required=True, help="Parquet, CSV, TSV or JSONL file")
    score.add_argument("--output", type=Path, required=True, help="Parquet file to write")
    score.add_argument("--format", dest="input_format", choices=["parquet", "csv", "tsv", "jsonl"],
                       help="input format (default: from the suffix)")
    score.add_argument("--text-column", default="text", help="column (or JSONL field) of the texts")
    score.add_argument("--id-column", help="column kept as `id` in the output")
    score.add_argument("--top-k", type=int, default=3, help="labels per text (0: all)")
    score.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: worker processes on this machine; ray: Ray Data actors (pip install "
                            "'tlserve[ray]'), on a Ray instance of the job's own or the cluster at --address")
    score.add_argument("--address", help="ray: the Ray cluster to join (HOST:PORT, or auto); the model repository "
                                         "must be at the same path on every node, the input and output only where "
                                         "this command runs")
    score.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="scoring processes (local) or actors (ray); default: cores")
    score.add_argument("--batch-size", type=int, default=512,
                       help="texts per batch a worker takes; inside it, texts run sorted by length in runs of at "
                            "most 65,536 characters")
    score.add_argument("--max-text-bytes", type=int, default=16_384,
                       help="longer texts are bad rows, as the server refuses them")
    score.add_argument("--errors", type=Path, help="bad rows as JSON lines (default: OUTPUT stem + .errors.jsonl)")
    score.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line on stderr")
    score.set_defaults(run=_run_score)

    test = _bundle_verb(verbs, "test", "score a model on a labelled file: accuracy, macro-F1, precision and recall "
                        "at k (as fastText's test), without a server or retraining", "--data held-out.csv --k 3")
    test.add_argument("--data", type=Path, required=True, help="labelled file: .csv, .tsv, .jsonl or fastText .txt")
    test.add_argument("--format", dest="data_format", choices=["csv", "tsv", "jsonl", "fasttext"],
                      help="data format (default: from the suffix)")
    test.add_argument("--text-column", default="text", help="column (or JSONL field) of the texts")
    test.add_argument("--label-column", default="label", help="column (or JSONL field) of the labels")
    test.add_argument("--k", type=int, default=3, help="precision and recall at 1 and at k")
    test.add_argument("--json", action="store_true", help="the figures as one JSON object")
    test.set_defaults(run=_run_test)

    predict = _bundle_verb(verbs, "predict", "the k most probable labels of each line of a file (or of standard "
                           "input), with their probabilities, as fastText's predict-prob; no server", "--k 2 texts.txt")
    predict.add_argument("input", nargs="?", default="-", help="UTF-8 text file, one text per line (- : stdin)")
    predict.add_argument("--k", type=int, default=1, help="labels per text")
    predict.add_argument("--json", action="store_true",
                         help="JSON lines (labels, probabilities, token_count, oov_fraction) instead of "
                              "'label probability ...' lines")
    predict.add_argument("--explain", type=int, default=0, metavar="N",
                         help="also the N words the top label owes most: each one's contribution is the top "
                              "label's probability minus its probability without the word (default: 0, none)")
    predict.set_defaults(run=_run_predict)


def _run_test(args: argparse.Namespace) -> int:
    from tlserve.offline.test_and_predict import test_model

    figures = test_model(args.model, args.data, args.data_format, args.text_column, args.label_column, args.k)
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(f"{'N':<12}{figures['examples']}")
    print(f"{'accuracy':<12}{figures['accuracy']:.4f}")
    print(f"{'macro-F1':<12}{figures['macro_f1']:.4f}")
    for k, (precision, recall) in figures["at_k"].items():
        print(f"{'P@' + k:<12}{precision:.4f}   {'R@' + k} {recall:.4f}")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    import sys

    from tlserve.offline.test_and_predict import predict_lines

    with (sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")) as lines:
        for answer in predict_lines(args.model, lines, args.k, args.explain):
            if args.json:
                print(json.dumps(answer, ensure_ascii=False))
                continue
            line = " ".join(f"{label} {probability:.6g}" for label, probability in answer["labels"].items())
            if "explanation" in answer:
                line += "  because: " + " ".join(f"{w['word']} {w['contribution']:+.3f}"
                                                 for w in answer["explanation"])
            print(line)
    return 0


def _run_score(args: argparse.Namespace) -> int:
    from tlserve.offline.job import ScoreJob, run

    summary = run(ScoreJob(model=args.model, input=args.input, output=args.output, input_format=args.input_format,
                           text_column=args.text_column, id_column=args.id_column, top_k=args.top_k,
                           engine=args.engine, address=args.address, workers=args.workers,
                           batch_size=args.batch_size, max_text_bytes=args.max_text_bytes,
                           errors=args.errors, progress=args.progress))
    print(json.dumps(summary, indent=1))
    return 0


def _bundle_verb(verbs: Any, name: str, help: str, example_flags: str) -> argparse.ArgumentParser:
    """A verb over one version of a model in a repository, read in this process (its --model)."""
    parser: argparse.ArgumentParser = verbs.add_parser(
        name, help=help, formatter_class=HelpFormatter,
        epilog=f"example: tlserve {name} --model models/tickets {example_flags}")
    parser.add_argument("--model", required=True, help="REPOSITORY/MODEL[:VERSION] (newest version without :VERSION)")
    return parser
