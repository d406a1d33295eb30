"""`tlserve test` and `tlserve predict`: a model's own scorer on a labelled file, or on lines of text, in this
process, as fastText's ``test`` and ``predict-prob`` do for its models."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.evaluation import at_k, evaluate
from tlserve.core.explanations import explain
from tlserve.core.labelled import load_labelled
from tlserve.core.ranking import top
from tlserve.core.scorer import Scorer
from tlserve.offline.job import resolve_model

_BATCH = 256


def _probabilities(scorer: Scorer, texts: list[str]) -> tuple[np.ndarray, Any]:
    parts, counts, fractions = [], [], []
    for start in range(0, len(texts), _BATCH):
        prediction = scorer.predict(texts[start:start + _BATCH])
        parts.append(prediction.probabilities)
        counts.append(prediction.token_counts)
        fractions.append(prediction.oov_fractions)
    return np.concatenate(parts), (np.concatenate(counts), np.concatenate(fractions))


def test_model(model: str, data: Path, data_format: str | None, text_column: str, label_column: str, k: int
               ) -> dict[str, Any]:
    """Accuracy and macro-F1 of the top label, and precision and recall at 1 and at `k`, on a labelled file."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, not {k}")
    repository, folder = resolve_model(model)
    scorer = Scorer.open(folder, repository)
    labelled = load_labelled(data, data_format, text_column, label_column)
    probabilities, _ = _probabilities(scorer, labelled.texts)
    evaluation = evaluate(labelled.labels, probabilities, scorer.labels)
    gold = [{label} for label in labelled.labels]
    return {"model": str(folder), "data": str(data), "examples": evaluation.examples,
            "accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1,
            "at_k": {str(n): at_k(gold, probabilities, scorer.labels, n) for n in sorted({1, k})},
            "unknown_labels": sorted(set(labelled.labels) - set(scorer.labels))}


def predict_lines(model: str, lines: Iterable[str], k: int, explain_words: int = 0) -> Iterator[dict[str, Any]]:
    """The `k` most probable labels of each line (a blank line answers too: every label at its prior); with
    `explain_words`, the words the top label owes most (`tlserve.core.explanations`)."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, not {k}")
    if explain_words < 0:
        raise ValueError(f"--explain must be 0 or more, not {explain_words}")
    repository, folder = resolve_model(model)
    scorer = Scorer.open(folder, repository)
    batch: list[str] = []

    def answers(texts: list[str]) -> Iterator[dict[str, Any]]:
        probabilities, (counts, fractions) = _probabilities(scorer, texts)
        indices, values = top(probabilities, k)
        why = explain(scorer, texts, explain_words) if explain_words else None
        for row, (order, probs) in enumerate(zip(indices.tolist(), values.tolist(), strict=True)):
            answer = {"labels": {scorer.labels[j]: p for j, p in zip(order, probs, strict=True)},
                      "token_count": int(counts[row]), "oov_fraction": float(fractions[row])}
            if why is not None:
                answer["explanation"] = [{"word": w.word, "contribution": w.contribution, "count": w.count}
                                         for w in why[row].words]
            yield answer

    for line in lines:
        batch.append(line.rstrip("\n"))
        if len(batch) == _BATCH:
            yield from answers(batch)
            batch = []
    if batch:
        yield from answers(batch)
