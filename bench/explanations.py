"""Explanations: are the words they name the ones the answer rests on, and what does one cost?

    python -m tlserve.bench.explanations --model data/models/wordnet --texts 1000 \\
        --long-texts data/tasks/spam-assassin.csv --out bench/results/explanations.json

Faithfulness (deletion test): on `--texts` texts of the model's own test split (rebuilt from the
seed and file its manifest records), every occurrence of the 3 words the explanation names
first is deleted, and so are 3 distinct words drawn at random from the same text (seeded). A text
counts when deleting the named words lowers the top label's probability more than deleting the
random ones. Texts of 3 distinct words or fewer lose every word either way (a tie): they are
reported apart.

Cost: `explain` on one text of 30 tokens (the first 30 tokens of each `--long-texts` text, in turn)
against `predict` on the same text, alternating, in this process: median and 99th percentile, with
the compiled encoder and with the Python one.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.explanations import MAX_WORDS, explain
from tlserve.core.features import OUTPUT
from tlserve.core.scorer import Scorer

DELETED = 3


def _top_probability(scorer: Scorer, tokens: list[list[str]], label: int) -> np.ndarray:
    encoded = scorer.featurizer.encode_tokens(tokens)
    return scorer.session.run([OUTPUT], encoded.inputs)[0][:, label]


def deletion_test(scorer: Scorer, texts: list[str], seed: int = 0) -> dict[str, Any]:
    """How often deleting the explained words lowers the top label's probability more than deleting random ones."""
    if scorer.featurizer.preprocess(texts[:1])[1] is not None:
        raise ValueError("the deletion test deletes tokens; a model reading characters is not supported here")
    rng = np.random.default_rng(seed)
    explanations = explain(scorer, texts, words=DELETED)
    tokens, _ = scorer.featurizer.preprocess(texts)
    better = ties = worse = few = 0
    drops: list[tuple[float, float]] = []
    for text_tokens, explanation in zip(tokens, explanations, strict=True):
        distinct = list(dict.fromkeys(text_tokens))[:MAX_WORDS]
        if len(distinct) <= DELETED:
            few += 1
            continue
        named = {word.word for word in explanation.words}
        drawn = {distinct[i] for i in rng.choice(len(distinct), DELETED, replace=False)}
        label = scorer.labels.index(explanation.label)
        after = _top_probability(scorer, [[t for t in text_tokens if t not in named],
                                          [t for t in text_tokens if t not in drawn]], label)
        named_drop, drawn_drop = explanation.probability - after[0], explanation.probability - after[1]
        drops.append((float(named_drop), float(drawn_drop)))
        if named_drop > drawn_drop:
            better += 1
        elif named_drop == drawn_drop:
            ties += 1
        else:
            worse += 1
    return {"texts": len(texts), "deleted_words": DELETED, "more_than_random": better, "tied": ties,
            "less_than_random": worse, "three_words_or_fewer": few,
            "share_of_all_texts": better / len(texts), "share_of_texts_over_three_words": better / max(len(drops), 1),
            "median_drop_named": statistics.median(d[0] for d in drops) if drops else None,
            "median_drop_random": statistics.median(d[1] for d in drops) if drops else None}


def cost(scorer: Scorer, texts: list[str], tokens: int = 30, rounds: int = 2000) -> dict[str, Any]:
    """explain and predict on one text of `tokens` tokens, alternating; microseconds."""
    preprocessor = scorer.featurizer.preprocessor
    chosen = [" ".join(found[:tokens]) for text in texts if len(found := preprocessor.tokens(text)) >= tokens]
    if not chosen:
        raise ValueError(f"no text of {tokens} tokens or more")
    timings: dict[str, list[float]] = {"explain": [], "predict": []}
    for i in range(rounds):
        text = chosen[i % len(chosen)]
        for name in (("explain", "predict") if i % 2 == 0 else ("predict", "explain")):
            started = time.perf_counter()
            if name == "explain":
                explain(scorer, [text])
            else:
                scorer.predict([text])
            timings[name].append((time.perf_counter() - started) * 1e6)
    return {"tokens": tokens, "calls": rounds, "distinct_texts": min(len(chosen), rounds),
            "encoder": scorer.featurizer.encoder,
            **{f"{name}_us": {"p50": round(float(np.percentile(values, 50)), 1),
                              "p99": round(float(np.percentile(values, 99)), 1)}
               for name, values in timings.items()}}


def _test_texts(scorer: Scorer, count: int) -> list[str]:
    from tlserve.trainer.config import TrainConfig
    from tlserve.trainer.train import load_splits

    data = scorer.bundle.manifest.training_data
    config = TrainConfig(data=Path(data.source), vectors=Path("."), repository=Path("."), model="m", seed=data.seed,
                         train_fraction=data.train_fraction)
    test = load_splits(config).test
    if len(test) != data.examples["test"]:
        raise ValueError(f"{data.source}: the rebuilt test split has {len(test)} texts, the manifest "
                         f"{data.examples['test']}: not the file the model was trained on")
    return test.texts[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (the newest version) or version")
    parser.add_argument("--texts", type=int, default=1000, help="test texts of the deletion test")
    parser.add_argument("--long-texts", type=Path, required=True, help="CSV with a text column: 30-token texts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from tlserve.offline.job import resolve_model

    repository, folder = resolve_model(str(args.model))
    scorer = Scorer.open(folder, repository)
    scorer.warm_up()
    with args.long_texts.open(encoding="utf-8", newline="") as handle:
        long_texts = [row["text"] for row, _ in zip(csv.DictReader(handle), range(500), strict=False)]
    result: dict[str, Any] = {"model": f"{scorer.name}/{scorer.version}",
                              "deletion": deletion_test(scorer, _test_texts(scorer, args.texts)),
                              "cost": [cost(scorer, long_texts)]}
    if scorer.featurizer.encoder == "native":  # and with the Python encoder, the fallback
        scorer.featurizer.prefer_native = False
        result["cost"].append(cost(scorer, long_texts))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
