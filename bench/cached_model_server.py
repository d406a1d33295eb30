"""`tlserve serve` with the model's work left out: each `Scorer.predict` answers from a cache.

    python -m tlserve.bench.cached_model_server serve --repository R ...   (the same arguments)

For benchmarks only: it shows what the serving path costs without preprocessing and
onnxruntime (every call of n texts gets the answer first computed for n texts), so a
benchmark can tell the server's own cost from the model's. Never serve users with it.
"""

from __future__ import annotations

import sys

from tlserve.core.scorer import Prediction, Scorer

_predict = Scorer.predict
_answers: dict[tuple[int, int], Prediction] = {}


def _cached_predict(self: Scorer, texts: list[str]) -> Prediction:
    key = (id(self), len(texts))
    if key not in _answers:
        _answers[key] = _predict(self, texts)
    return _answers[key]


def main() -> int:
    Scorer.predict = _cached_predict  # type: ignore[method-assign]
    from tlserve.cli import main as tlserve_main

    return tlserve_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
