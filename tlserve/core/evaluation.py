"""Scoring a model on labelled texts: accuracy, macro-F1, per-class scores, confusion, precision and recall at
k, calibration. NumPy only, so `tlserve test` scores a model where the trainer is not installed; the
trainer's reports use the same functions (tests/core/test_evaluation.py compares them with
scikit-learn's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlserve.core.features import EncodedBatch


@dataclass
class Evaluation:
    """Scores of one model on one split."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    labels: list[str]
    oov_share: float
    examples: int

    def headline(self) -> dict[str, float]:
        return {"test_accuracy": round(self.accuracy, 6), "test_macro_f1": round(self.macro_f1, 6),
                "test_oov_share": round(self.oov_share, 6), "test_examples": float(self.examples)}


def confusion(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """int64 [classes, classes]: row = true class, column = predicted class (-1 in `truth`: counted nowhere)."""
    known = truth >= 0
    return np.bincount(truth[known] * classes + predicted[known], minlength=classes * classes).reshape(classes,
                                                                                                      classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def evaluate(true_labels: list[str], probabilities: np.ndarray, labels: list[str],
             encoded: EncodedBatch | None = None) -> Evaluation:
    """Scores of the top label against `true_labels` (a label outside `labels` counts as a miss)."""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(label, -1) for label in true_labels], dtype=np.int64)
    predicted = probabilities.argmax(1)
    matrix = confusion(truth, predicted, len(labels))
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    # A prediction of a text whose label the model does not know still counts against precision.
    predicted_counts = np.bincount(predicted, minlength=len(labels))
    precision = _ratio(hits, predicted_counts.astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    per_class = {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    oov = 0.0
    if encoded is not None:
        oov = float(encoded.oov_counts.sum() / max(1, encoded.token_counts.sum()))
    return Evaluation(
        accuracy=float(np.mean(predicted == truth)) if len(truth) else 0.0,
        macro_f1=float(f1.mean()) if len(labels) else 0.0,
        per_class=per_class,
        confusion=matrix.tolist(),
        labels=labels,
        oov_share=oov,
        examples=len(true_labels),
    )


def at_k(gold: list[set[str]], probabilities: np.ndarray, labels: list[str], k: int) -> tuple[float, float]:
    """Precision and recall at k, as fastText's `test` counts them: of all k x n labels predicted, the share
    that are gold; of all gold labels, the share among their text's top k."""
    k = min(k, len(labels))
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    hits = sum(sum(labels[j] in wanted for j in row) for row, wanted in zip(top.tolist(), gold, strict=True))
    predicted = k * len(gold)
    total = sum(len(wanted) for wanted in gold)
    return (hits / predicted if predicted else 0.0, hits / total if total else 0.0)


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """ECE of the top label: the mean |accuracy - confidence| over `bins` equal-width confidence bins,
    weighted by the share of texts in each."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of exactly 0 joins bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total = 0.0
    for i in range(bins):
        members = which == i
        if members.any():
            total += members.mean() * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return float(total)


def reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin: its range, the texts in it, their mean confidence and accuracy (the diagram's data)."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        members = which == i
        if members.any():
            out.append({"low": float(edges[i]), "high": float(edges[i + 1]), "count": int(members.sum()),
                        "confidence": float(confidence[members].mean()), "accuracy": float(correct[members].mean())})
    return out
