"""Training time of tlserve's default against fastText with the same vectors, side by side in one process.

    python -m tlserve.bench.training_time --rows wordnet-1 spam-10 debian-synopsis-10 --repeats 3

Per row of the accuracy table (its task, vectors and label budget), on one seeded split that the
table does not use: the default's training (`fit_model`: members, lexical channel, out-of-fold
answers, transfer check, mixture and calibration) and fastText with the store's vectors (its grid of
12 fits on validation and the final fit, as `tlserve evaluate` times it) take turns, `--repeats`
times, after one untimed warm-up of each (imports and first-call costs are paid once, as by a
process that trains). Medians, every run, and the ratio of the medians land in
`bench/results/training-time.json` (rows already there are kept unless rerun).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from tlserve.bench.accuracy import rows
from tlserve.trainer.config import TrainConfig

RESULTS = Path("bench/results/training-time.json")


def train_config(arguments: list[str], seed: int) -> TrainConfig:
    """The TrainConfig of an accuracy row's `tlserve evaluate` arguments."""
    values = dict(zip(arguments[::2], arguments[1::2], strict=True))
    return TrainConfig(repository=Path("unused"), model="timing", data=Path(values["--data"]),
                       vectors=Path(values["--vectors"]), train_fraction=float(values["--train-fraction"]),
                       tokenizer=values.get("--tokenizer", "latin"),
                       max_tokens=int(values.get("--max-tokens", TrainConfig.max_tokens)), seed=seed, progress=False)


def time_row(config: TrainConfig, repeats: int) -> dict[str, Any]:
    from tlserve.core.labelled import is_chinese
    from tlserve.core.vector_store import VectorStore
    from tlserve.trainer.fitting import fit_model
    from tlserve.trainer.peers import fasttext_peers
    from tlserve.trainer.train import load_splits

    splits = load_splits(config)
    labels = sorted(set(splits.train.labels))
    store = VectorStore(config.vectors)
    chinese = is_chinese(splits.train.texts)

    def tlserve_seconds() -> float:
        started = time.perf_counter()
        fit_model(config, splits, store, labels)
        return time.perf_counter() - started

    def fasttext_seconds() -> float:
        return fasttext_peers(splits, labels, store, config.seed, chinese)["fasttext_vectors"].seconds

    tlserve_seconds(), fasttext_seconds()  # warm-up
    runs: dict[str, list[float]] = {"tlserve": [], "fasttext_vectors": []}
    for repeat in range(repeats):  # turns; which goes first alternates
        order = [("tlserve", tlserve_seconds), ("fasttext_vectors", fasttext_seconds)]
        for name, measure in order if repeat % 2 == 0 else order[::-1]:
            runs[name].append(round(measure(), 2))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {"seed": config.seed, "train_texts": len(splits.train), "runs": runs,
            "median_seconds": medians, "ratio": round(medians["tlserve"] / medians["fasttext_vectors"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--rows", nargs="+", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000, help="a split the accuracy table does not use")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    known = rows(args.data)
    unknown = [name for name in args.rows if name not in known or "--peers" in known[name]]
    if unknown:
        parser.error(f"--rows: no timed row named {', '.join(unknown)} (rows: {', '.join(known)})")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for name in args.rows:
        results[name] = time_row(train_config(known[name], args.seed), args.repeats)
        print(name, json.dumps(results[name]), flush=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
