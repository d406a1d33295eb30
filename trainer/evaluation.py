"""Scoring a model on a split: accuracy, macro-F1, per-class scores, confusion, OOV share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tlserve.features import EncodedBatch


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


def evaluate(true_labels: list[str], probabilities: np.ndarray, labels: list[str],
             encoded: EncodedBatch | None = None) -> Evaluation:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = [labels[i] for i in probabilities.argmax(1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        true_labels, predicted, labels=labels, zero_division=0
    )
    per_class = {
        label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
    }
    oov = 0.0
    if encoded is not None:
        oov = float(encoded.oov_counts.sum() / max(1, encoded.token_counts.sum()))
    return Evaluation(
        accuracy=float(accuracy_score(true_labels, predicted)),
        macro_f1=float(f1_score(true_labels, predicted, labels=labels, average="macro", zero_division=0)),
        per_class=per_class,
        confusion=confusion_matrix(true_labels, predicted, labels=labels).tolist(),
        labels=labels,
        oov_share=oov,
        examples=len(true_labels),
    )


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
