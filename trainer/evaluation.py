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
