"""The training report: report.json, report.md and PNG figures (matplotlib, no display).

Besides the scores, the report diagnoses the two failure modes of transfer learning:
negative transfer (pretrained vectors no better than random ones) and data mismatch
(the vectors cover the task's words poorly: a high out-of-vocabulary share).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.features import EncodedBatch

OOV_WARNING = 0.2


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


def _figure_confusion(evaluation: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(evaluation.confusion, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(evaluation.labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(evaluation.labels))
    ax.set_xticks(ticks, evaluation.labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, evaluation.labels, fontsize=8)
    if len(evaluation.labels) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion on test (accuracy {evaluation.accuracy:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _figure_curves(history: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history.loss) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, history.loss, label="train")
    left.plot(epochs, history.val_loss, label="validation")
    left.axvline(history.best_epoch + 1, color="grey", linestyle=":", label="best (restored)")
    left.set_title("loss")
    right.plot(epochs, history.accuracy, label="train")
    right.plot(epochs, history.val_accuracy, label="validation")
    right.set_title("accuracy")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def diagnosis(evaluation: Evaluation, comparison: dict[str, Any] | None) -> list[str]:
    """Plain-language findings on the two failure modes of transfer."""
    notes = []
    if evaluation.oov_share > OOV_WARNING:
        notes.append(
            f"Data mismatch: {evaluation.oov_share:.1%} of the test tokens are not in the vocabulary "
            f"(over {OOV_WARNING:.0%}); the pretrained vectors cover this task's words poorly."
        )
    else:
        notes.append(f"Vocabulary coverage is good: {evaluation.oov_share:.1%} of test tokens are out of vocabulary.")
    random_key = f"random_vectors_{comparison.get('mode', '')}" if comparison else ""
    if comparison and random_key in comparison.get("systems", {}):
        random_accuracy = comparison["systems"][random_key]["accuracy"]
        gain = evaluation.accuracy - random_accuracy
        if gain <= 0.0:
            notes.append(
                f"Negative transfer: pretrained vectors scored {evaluation.accuracy:.3f}, no better than random "
                f"vectors of the same shape ({random_accuracy:.3f}); the source knowledge does not help this task."
            )
        else:
            notes.append(f"Transfer helped: +{gain:.3f} accuracy over random vectors of the same shape "
                         f"({random_accuracy:.3f}).")
    return notes


def write(folder: Path, config: Any, manifest: dict[str, Any], evaluation: Evaluation, history: Any,
          comparison: dict[str, Any] | None) -> None:
    _figure_confusion(evaluation, folder / "confusion.png")
    _figure_curves(history, folder / "training_curves.png")
    findings = diagnosis(evaluation, comparison)
    if comparison and comparison.get("learning_curve"):
        from tlserve.trainer.compare import figure_learning_curve

        figure_learning_curve(comparison["learning_curve"], folder / "learning_curve.png")
    payload = {
        "model": manifest["model"],
        "mode": manifest["mode"],
        "test": {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1, "oov_share": evaluation.oov_share,
                 "examples": evaluation.examples, "per_class": evaluation.per_class,
                 "confusion": {"labels": evaluation.labels, "matrix": evaluation.confusion}},
        "training": {"epochs_run": len(history.loss), "best_epoch": history.best_epoch + 1,
                     "best_val_loss": history.val_loss[history.best_epoch],
                     "best_val_accuracy": history.val_accuracy[history.best_epoch]},
        "parity": manifest["parity"],
        "data": manifest["training_data"],
        "hyperparameters": manifest["hyperparameters"],
        "comparison": comparison,
        "findings": findings,
    }
    (folder / "report.json").write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# {manifest['model']} ({manifest['mode']})",
        "",
        f"Test accuracy **{evaluation.accuracy:.4f}**, macro-F1 **{evaluation.macro_f1:.4f}** on "
        f"{evaluation.examples} held-out examples (touched once, after model selection on validation).",
        "",
        "## Findings",
        "",
        *[f"- {note}" for note in findings],
        "",
    ]
    if comparison:
        lines += ["## Comparison (same split, same run)", "", "| system | accuracy | macro-F1 |", "|---|---|---|"]
        for name, scores in comparison["systems"].items():
            lines.append(f"| {name} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} |")
        lines.append("")
        if comparison.get("learning_curve"):
            lines += ["## Learning curve", "", "| labels | pretrained | random |", "|---|---|---|"]
            for point in comparison["learning_curve"]:
                lines.append(f"| {point['fraction']:.0%} ({point['examples']}) | {point['pretrained']:.4f} | "
                             f"{point['random']:.4f} |")
            lines += ["", "![learning curve](learning_curve.png)", ""]
    lines += ["## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, scores in evaluation.per_class.items():
        lines.append(f"| {label} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1']:.3f} | "
                     f"{scores['support']} |")
    parity = manifest["parity"]
    lines += [
        "",
        f"ONNX parity on {parity['examples']} test inputs: max |dp| = {parity['max_abs_diff']:.2e}, "
        f"argmax agreement {parity['argmax_agreement']:.2%}.",
        "",
        "![confusion](confusion.png)",
        "",
        "![training curves](training_curves.png)",
        "",
    ]
    (folder / "report.md").write_text("\n".join(lines))
