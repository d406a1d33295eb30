"""Text -> probabilities per text, compiled encoder against the Python encoder, in one process.

    python -m tlserve.bench.native_encoder --model data/models/wordnet --data data/tasks/wordnet-nouns-top10.csv \\
        --data data/tasks/spam-assassin.csv --out bench/results/native-encoder.json

One scorer per model; each text is scored alone (a serving call of one text) by both encoders,
taking turns a block of 50 texts at a time (which goes first alternates), so both see the same
machine state. "warm": texts one after the other; "evicted": a buffer is read before each text,
so each call starts with cold caches: 4 MB evicts the core's L2 (what other work on a busy
server's core does), 64 MB the whole shared L3 (and all of the model and the interpreter's code).
Reports medians, means and p99 of the whole call
(`Scorer.predict`: tokenise, encode, onnxruntime) and of the encoder alone, and the ratios
native / Python. Every call's probabilities are compared between the encoders.
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

from tlserve.core.bundle import versions_of
from tlserve.core.scorer import Scorer

ENCODERS = ("python", "native")
BLOCK = 50
"""Texts per turn: each encoder scores a block of texts one after the other (which goes first alternates), so
"warm" is the state of a server answering calls of one encoder, not of two taking turns."""


def texts_of(path: Path, limit: int) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        return [row["text"] for row, _ in zip(csv.DictReader(handle), range(limit), strict=False)]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_us": round(statistics.median(values), 1), "mean_us": round(statistics.fmean(values), 1),
            "p99_us": round(float(np.percentile(values, 99)), 1)}


def measure(scorer: Scorer, texts: list[str], evict_mb: int) -> dict[str, Any]:
    featurizer = scorer.featurizer
    if featurizer.native is None:
        raise SystemExit("this install has no compiled encoder (or the model's arrays do not suit it)")
    flush = np.ones(evict_mb << 20, dtype=np.uint8) if evict_mb else None
    total: dict[str, list[float]] = {name: [] for name in ENCODERS}
    encode: dict[str, list[float]] = {name: [] for name in ENCODERS}
    differ = 0
    for block, start in enumerate(range(0, len(texts), BLOCK)):
        answers: dict[str, list[bytes]] = {}
        for name in ENCODERS if block % 2 == 0 else ENCODERS[::-1]:
            featurizer.prefer_native = name == "native"
            answers[name] = []
            for text in texts[start : start + BLOCK]:
                if flush is not None:
                    flush.sum()  # evicts the model's rows, tables and code from the caches
                started = time.perf_counter()
                prediction = scorer.predict([text])
                total[name].append((time.perf_counter() - started) * 1e6)
                encode[name].append(prediction.encode_seconds * 1e6)
                answers[name].append(prediction.probabilities.tobytes())
        differ += sum(a != b for a, b in zip(answers["python"], answers["native"], strict=True))
    featurizer.prefer_native = True
    out: dict[str, Any] = {"texts": len(texts), "probabilities_differ": differ}
    for stage, values in (("text_to_probabilities", total), ("encode", encode)):
        out[stage] = {name: _summary(values[name]) for name in ENCODERS}
        out[stage]["ratio_p50"] = round(out[stage]["native"]["p50_us"] / out[stage]["python"]["p50_us"], 3)
        out[stage]["ratio_mean"] = round(out[stage]["native"]["mean_us"] / out[stage]["python"]["mean_us"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="a model folder (its newest version) or a version folder; repeatable")
    parser.add_argument("--data", type=Path, action="append", required=True, help="CSV with a text column; repeatable")
    parser.add_argument("--limit", type=int, default=2000, help="texts per file (default 2000)")
    parser.add_argument("--out", type=Path, help="JSON result")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    for model in args.model:
        version = model if (model / "manifest.json").is_file() else model / str(max(versions_of(model)))
        scorer = Scorer.open(version)
        for data in args.data:
            texts = texts_of(data, args.limit)
            for evict_mb in (0, 4, 64):
                key = f"{model.name} / {data.stem} / {f'evicted {evict_mb} MB' if evict_mb else 'warm'}"
                results[key] = measure(scorer, texts, evict_mb)
                row = results[key]["text_to_probabilities"]
                print(f"{key}: python {row['python']['p50_us']} us, native {row['native']['p50_us']} us "
                      f"(p50 ratio {row['ratio_p50']}, mean ratio {row['ratio_mean']}); encode ratio "
                      f"{results[key]['encode']['ratio_p50']}; probabilities differ on "
                      f"{results[key]['probabilities_differ']} texts", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
