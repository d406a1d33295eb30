"""Adaptation on the user's own unlabelled texts: a label budget, the rest of the training pool unlabelled.

    python -m tlserve.bench.adapt_pool --data data/tasks/thucnews-headlines.csv \
        --vectors data/stores/zh-registry-w2v-100d --train-fraction 0.1 --tokenizer jieba --out FILE

The common case `tlserve vectors adapt` is for: a few labels and many more texts of the same
kind without them. For each seeded split (the splits of `tlserve evaluate`), the texts outside
its test set (training and validation pool at 100 %, labels ignored) are the corpus; the store is
adapted on them (a store per split, so no test text is ever seen), and the default model is
trained at the label budget on the adapted store and scored on the test set. Compare with the
same seeds' rows of `tlserve evaluate` on the store as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    from tlserve.core.vector_store import VectorStore
    from tlserve.trainer import commands
    from tlserve.trainer.evaluate import EvaluateConfig, run_split
    from tlserve.trainer.train import load_splits

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--vectors", type=Path, required=True, help="the store to adapt")
    parser.add_argument("--train-fraction", type=float, required=True, help="the label budget")
    parser.add_argument("--tokenizer", default="latin", choices=["latin", "jieba"])
    parser.add_argument("--learning-rate", type=float, default=0.0025, help="tlserve vectors adapt's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, required=True, help="JSON result")
    args = parser.parse_args(argv)

    verbs = argparse.ArgumentParser().add_subparsers(dest="verb")
    commands.register(verbs)
    evaluate_args = verbs.choices["evaluate"].parse_args([
        "--data", str(args.data), "--vectors", str(args.vectors), "--train-fraction", str(args.train_fraction),
        "--tokenizer", args.tokenizer, "--modes", "finetune", "--out", str(args.out)])
    train = commands._train_config(evaluate_args)
    splits_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adapt-pool-") as work:
        for seed in args.seeds:
            budget = load_splits(replace(train, seed=seed))
            pool = load_splits(replace(train, seed=seed, train_fraction=1.0))
            if sorted(pool.test.texts) != sorted(budget.test.texts):
                raise RuntimeError(f"seed {seed}: the test set depends on the label budget")
            corpus = Path(work) / f"corpus-{seed}.txt"
            texts = [" ".join(text.split()) for text in pool.train.texts + pool.validation.texts]
            corpus.write_text("\n".join(texts) + "\n", encoding="utf-8")
            store = Path(work) / f"store-{seed}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "vectors", "adapt",
                            "--vectors", str(args.vectors), "--corpus", str(corpus), "--out", str(store),
                            "--tokenizer", args.tokenizer, "--learning-rate", str(args.learning_rate)], check=True)
            adapt_seconds = time.perf_counter() - started
            adapted = VectorStore(store)
            result = run_split(EvaluateConfig(replace(train, vectors=store), 1, ["finetune"], []), seed, adapted)
            result.update(corpus_texts=len(texts), adapt_seconds=round(adapt_seconds, 1),
                          adapted_words=adapted.manifest.size)
            scores = result["systems"]["tlserve_finetune"]
            _LOGGER.warning("seed %d: %d corpus texts, accuracy %.4f, ECE %.4f", seed, len(texts),
                            scores["accuracy"], scores["ece"])
            splits_out.append(result)
    accuracy = [split["systems"]["tlserve_finetune"]["accuracy"] for split in splits_out]
    report = {"data": str(args.data), "vectors": str(args.vectors), "train_fraction": args.train_fraction,
              "learning_rate": args.learning_rate, "splits": splits_out,
              "accuracy_mean": statistics.mean(accuracy),
              "accuracy_sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "splits"}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    sys.exit(main())
