"""The serving cost of keeping long texts: one model, its token cap at 256 and at 4,096, in-process.

    python -m tlserve.bench.long_texts --repository REPO --model spam --data data/tasks/spam-assassin.csv

The same bundle scores every text of the file one at a time (a serving call of one text),
first with its preprocessing capped at 256 tokens, then at 4,096 (the training default),
alternating per text (and which cap goes first) so both see the same machine state. It reports the median, mean and
99th percentile of the featurizer's time (tokenise, look up, pool, n-grams) and of the
onnxruntime run per text, and the share of texts the cap cuts.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.preprocessing import Preprocessor
from tlserve.core.scorer import Scorer

CAPS = (256, 4096)


def measure(scorer: Scorer, texts: list[str]) -> dict[str, Any]:
    preprocessors = {cap: Preprocessor(replace(scorer.featurizer.preprocessor.config, max_tokens=cap)) for cap in CAPS}
    times: dict[int, dict[str, list[float]]] = {cap: {"encode": [], "run": []} for cap in CAPS}
    for i, text in enumerate(texts):
        # The first of the two calls on a text pays its cache misses: alternate which cap goes first.
        for cap in CAPS if i % 2 == 0 else CAPS[::-1]:
            scorer.featurizer.preprocessor = preprocessors[cap]
            prediction = scorer.predict([text])
            times[cap]["encode"].append(prediction.encode_seconds * 1e3)
            times[cap]["run"].append(prediction.inference_seconds * 1e3)
    lengths = np.array([len(preprocessors[CAPS[-1]].tokens(text)) for text in texts])
    out: dict[str, Any] = {"texts": len(texts), "tokens_p50": int(np.median(lengths)),
                           "share_over": {str(cap): float((lengths > cap).mean()) for cap in CAPS}}
    for cap in CAPS:
        total = [e + r for e, r in zip(times[cap]["encode"], times[cap]["run"], strict=True)]
        out[f"cap_{cap}"] = {
            stage: {"p50_ms": round(statistics.median(values), 4), "mean_ms": round(statistics.fmean(values), 4),
                    "p99_ms": round(float(np.percentile(values, 99)), 4)}
            for stage, values in (("encode", times[cap]["encode"]), ("run", times[cap]["run"]), ("total", total))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, required=True, help="CSV with a text column")
    parser.add_argument("--limit", type=int, default=2000, help="texts measured (default 2000)")
    parser.add_argument("--out", type=Path, help="JSON result")
    args = parser.parse_args(argv)
    csv.field_size_limit(sys.maxsize)
    with open(args.data, newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][: args.limit]
    scorer = Scorer.from_repository(args.repository, args.model)
    for text in texts[:50]:  # warm caches and the session
        scorer.predict([text])
    result = {"model": f"{args.model}/{scorer.version}", **measure(scorer, texts)}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
