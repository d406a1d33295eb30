"""What two versions of a model cost to serve, side by side in one process: per text, per batch, per head.

    python -m tlserve.bench.model_cost --before data/models/wordnet/1 --after data/bench/chars-repo/wordnet/1 \\
        --data data/tasks/wordnet-nouns-top10.csv --data data/tasks/spam-assassin.csv \\
        --out bench/results/lexicon-chars-cost.json

For a change to what a model computes (its lexicon, its graph): each text is scored alone (a serving
call of one text) by both versions, taking turns a block of 50 texts at a time (which goes first
alternates), then batches of 256 texts the same way; medians and p99 of `Scorer.predict` (tokenise,
encode, onnxruntime) and of the encoder alone, and the ratios after / before. Per head: the files a
server loads per model (everything but the report and its plots), the lexicon's n-grams, and the
bytes of the lexicon's tables in memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.bench.native_encoder import texts_of
from tlserve.core.scorer import Scorer

BLOCK = 50
BATCH = 256
_NOT_LOADED = {".png", ".md"}


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_us": round(statistics.median(values), 1), "p99_us": round(float(np.percentile(values, 99)), 1)}


def _turns(scorers: dict[str, Scorer], groups: list[list[str]]) -> dict[str, Any]:
    total: dict[str, list[float]] = {name: [] for name in scorers}
    encode: dict[str, list[float]] = {name: [] for name in scorers}
    names = list(scorers)
    for turn, start in enumerate(range(0, len(groups), BLOCK)):
        for name in names if turn % 2 == 0 else names[::-1]:
            for group in groups[start : start + BLOCK]:
                started = time.perf_counter()
                prediction = scorers[name].predict(group)
                total[name].append((time.perf_counter() - started) * 1e6)
                encode[name].append(prediction.encode_seconds * 1e6)
    out: dict[str, Any] = {"calls": len(groups)}
    for stage, values in (("text_to_probabilities", total), ("encode", encode)):
        out[stage] = {name: _summary(values[name]) for name in names}
        out[stage]["ratio_p50"] = round(out[stage]["after"]["p50_us"] / out[stage]["before"]["p50_us"], 3)
    return out


def per_head(version: Path, scorer: Scorer) -> dict[str, Any]:
    files = [p for p in version.iterdir() if p.is_file() and p.suffix not in _NOT_LOADED and p.name != "report.json"]
    lexicon = scorer.featurizer.lexicon
    tables = 0 if lexicon is None else lexicon.hashes.nbytes + lexicon.ids.nbytes + lexicon.idf.nbytes
    return {"files_mb": round(sum(p.stat().st_size for p in files) / 2**20, 2),
            "lexicon_ngrams": 0 if lexicon is None else len(lexicon),
            "lexicon_units": None if lexicon is None else lexicon.units, "lexicon_tables_mb": round(tables / 2**20, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="version folder of the model as it was")
    parser.add_argument("--after", type=Path, required=True, help="version folder of the changed model")
    parser.add_argument("--data", type=Path, action="append", required=True, help="CSV with a text column; repeatable")
    parser.add_argument("--limit", type=int, default=2000, help="texts per file (default 2000)")
    parser.add_argument("--out", type=Path, help="JSON result")
    args = parser.parse_args(argv)
    scorers = {"before": Scorer.open(args.before), "after": Scorer.open(args.after)}
    results: dict[str, Any] = {"before": str(args.before), "after": str(args.after),
                               "per_head": {name: per_head(path, scorers[name])
                                            for name, path in (("before", args.before), ("after", args.after))}}
    for data in args.data:
        texts = texts_of(data, args.limit)
        for kind, groups in (("one text", [[text] for text in texts]),
                             (f"batch of {BATCH}", [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)] * 4)):
            key = f"{data.stem} / {kind}"
            results[key] = _turns(scorers, groups)
            row = results[key]["text_to_probabilities"]
            print(f"{key}: before {row['before']['p50_us']} us, after {row['after']['p50_us']} us (p50 ratio "
                  f"{row['ratio_p50']}); encode ratio {results[key]['encode']['ratio_p50']}", flush=True)
    print(json.dumps(results["per_head"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
