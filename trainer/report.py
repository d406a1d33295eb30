"""The training report: report.json, report.md and PNG figures (matplotlib, no display).

Besides the scores, the report diagnoses the two failure modes of transfer learning:
negative transfer (pretrained vectors no better than random ones) and data mismatch
(the vectors cover the task's words poorly: a high out-of-vocabulary share).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core import bundle
from tlserve.core.bundle import BundleManifest
from tlserve.core.evaluation import Evaluation

OOV_WARNING = 0.2


# Past this many labels a confusion matrix is unreadable (and its figure grows with the square
# of the labels): the report shows the most confused pairs instead, in a figure of fixed size.
MATRIX_LABELS = 30
TOP_PAIRS = 20


def confused_pairs(evaluation: Evaluation, top: int = TOP_PAIRS) -> list[tuple[str, str, int]]:
    """The `top` (true, predicted, count) cells off the diagonal, most frequent first."""
    matrix = np.array(evaluation.confusion, dtype=np.int64)
    np.fill_diagonal(matrix, 0)
    flat = np.argsort(-matrix, axis=None, kind="stable")[:top]
    rows, cols = np.unravel_index(flat, matrix.shape)
    return [(evaluation.labels[i], evaluation.labels[j], int(matrix[i, j]))
            for i, j in zip(rows.tolist(), cols.tolist(), strict=True) if matrix[i, j] > 0]


def _figure_confusion(evaluation: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(evaluation.labels) > MATRIX_LABELS:
        pairs = confused_pairs(evaluation)
        fig, ax = plt.subplots(figsize=(8, 6))
        names = [f"{_short(true)} -> {_short(predicted)}" for true, predicted, _ in pairs][::-1]
        ax.barh(range(len(pairs)), [count for _, _, count in pairs][::-1], color="tab:blue")
        ax.set_yticks(range(len(pairs)), names, fontsize=7)
        ax.set_xlabel("test texts")
        ax.set_title(f"Most confused pairs, true -> predicted ({len(evaluation.labels)} labels; "
                     f"accuracy {evaluation.accuracy:.3f})")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return
    matrix = np.array(evaluation.confusion, dtype=np.float64)
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = max(5.0, 0.45 * len(evaluation.labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(evaluation.labels))
    ax.set_xticks(ticks, [_short(label) for label in evaluation.labels], rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, [_short(label) for label in evaluation.labels], fontsize=8)
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


def _short(label: str, width: int = 40) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _confusion_record(evaluation: Evaluation) -> dict[str, Any]:
    """The confusion matrix in report.json: whole up to MATRIX_LABELS labels, else its non-zero cells
    (at most one per test text), so the report's size never grows with the square of the labels."""
    if len(evaluation.labels) <= MATRIX_LABELS:
        return {"labels": evaluation.labels, "matrix": evaluation.confusion}
    cells = [[i, j, count] for i, row in enumerate(evaluation.confusion) for j, count in enumerate(row) if count]
    return {"labels": evaluation.labels, "cells": cells, "most_confused": confused_pairs(evaluation)}


def _figure_curves(history: Any, path: Path, member: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history.loss) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    fig.suptitle(f"training curves of {member}")
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


def _figure_reliability(calibration: dict[str, Any], path: Path) -> None:
    """Reliability diagram on the test split: accuracy against confidence per bin, before and after scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for key, label, marker in (("bins_before", f"before (ECE {calibration['ece_before']:.3f})", "x"),
                               ("bins", f"after, T={calibration['temperature']:.2f} "
                                        f"(ECE {calibration['ece_after']:.3f})", "o")):
        bins = calibration[key]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker, label=label)
        if key == "bins":  # how many test texts each point stands on
            for b in bins:
                ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="grey")
    ax.set_xlabel("confidence (top label)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figure_learning_curve(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [p["examples"] for p in points]
    ax.plot(x, [p["pretrained"] for p in points], marker="o", label="pretrained vectors")
    ax.plot(x, [p["random"] for p in points], marker="s", label="random vectors (no transfer)")
    ax.set_xscale("log")
    ax.set_xlabel("training labels")
    ax.set_ylabel("test accuracy")
    ax.set_title("Learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def transfer_finding(transfer: dict[str, Any]) -> str:
    """Data mismatch and negative transfer, judged by what the vectors buy on the task's validation texts:
    over random vectors of the same shape, and over the task's own words (the lexical channel)."""
    n, pretrained, random = transfer["validation_examples"], transfer["pretrained"], transfer["random"]
    # One standard error of the difference of two accuracies on n texts (at least a point):
    # smaller differences are noise.
    margin = max(0.01, math.sqrt(2.0 * pretrained * (1.0 - pretrained) / max(1, n)))
    measured = (f"on the {n} validation texts a linear probe of the pooled vectors scored {pretrained:.3f} on the "
                f"pretrained vectors and {random:.3f} on random vectors of the same shape")
    advice = ("Adapt the vectors on unlabelled text of your domain (`tlserve vectors adapt`), bring more labels, "
              "or use vectors from a source closer to your texts.")
    if pretrained - random <= margin:
        return (f"Data mismatch (negative transfer): the pretrained vectors buy no more than random ones here; "
                f"{measured}. {advice}")
    if "mixed_log_loss" in transfer:
        gain = transfer["lexical_log_loss"] - transfer["mixed_log_loss"]
        measured += (f"; adding the vectors' channels to the task's own words (the lexical channel) moved the "
                     f"validation log-loss from {transfer['lexical_log_loss']:.3f} to {transfer['mixed_log_loss']:.3f}")
        # Less than 0.01 nats: the vectors add nothing the words do not already give.
        if gain < 0.01:
            return (f"Data mismatch: the vectors help over random ones but add nothing to the task's own words; "
                    f"{measured}. The model leans on its lexical channel. {advice}")
    return f"Transfer helps: +{pretrained - random:.3f} validation accuracy over random vectors; {measured}."


def diagnosis(evaluation: Evaluation, comparison: dict[str, Any] | None,
              manifest: BundleManifest | None = None, transfer: dict[str, Any] | None = None) -> list[str]:
    """Plain-language findings on the two failure modes of transfer, and on the data."""
    notes = []
    if manifest is not None and manifest.training_data.truncated_texts:
        cap = manifest.preprocessing.max_tokens
        notes.append(f"Long texts: {manifest.training_data.truncated_texts} training texts have more than {cap} "
                     f"tokens and were cut to their first {cap} (raise --max-tokens to keep more).")
    if transfer is not None:
        notes.append(transfer_finding(transfer))
    if evaluation.oov_share > OOV_WARNING:
        notes.append(
            f"Data mismatch: {evaluation.oov_share:.1%} of the test tokens are not in the vocabulary "
            f"(over {OOV_WARNING:.0%}); the pretrained vectors cover this task's words poorly."
        )
    else:
        notes.append(f"Vocabulary coverage: {evaluation.oov_share:.1%} of test tokens are out of vocabulary.")
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


def write(writer: bundle.BundleWriter, manifest: BundleManifest, evaluation: Evaluation, history: Any,
          comparison: dict[str, Any] | None, transfer: dict[str, Any] | None = None,
          calibration: dict[str, Any] | None = None, member: str = "the model") -> None:
    """Writes report.json, report.md and the figures into the version `writer` stages; `member` names the
    network whose training `history` is (of a mixture, its first member)."""
    _figure_confusion(evaluation, writer.file(bundle.CONFUSION_FIGURE))
    _figure_curves(history, writer.file(bundle.CURVES_FIGURE), member)
    findings = diagnosis(evaluation, comparison, manifest, transfer)
    if comparison and comparison.get("learning_curve"):
        figure_learning_curve(comparison["learning_curve"], writer.file(bundle.LEARNING_CURVE_FIGURE))
    if calibration is not None:
        _figure_reliability(calibration, writer.file(bundle.RELIABILITY_FIGURE))
    parity = manifest.parity
    payload = {
        "model": manifest.model,
        "mode": manifest.mode,
        "test": {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1, "oov_share": evaluation.oov_share,
                 "examples": evaluation.examples, "per_class": evaluation.per_class,
                 "confusion": _confusion_record(evaluation)},
        "training": {"epochs_run": len(history.loss), "best_epoch": history.best_epoch + 1,
                     "best_val_loss": history.val_loss[history.best_epoch],
                     "best_val_accuracy": history.val_accuracy[history.best_epoch]},
        "parity": asdict(parity),
        "data": asdict(manifest.training_data),
        "hyperparameters": manifest.hyperparameters,
        "comparison": comparison,
        "transfer_check": transfer,
        "calibration": calibration,
        "findings": findings,
    }
    writer.file(bundle.REPORT_JSON).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# {manifest.model} ({manifest.mode})",
        "",
        f"Test accuracy **{evaluation.accuracy:.4f}**, macro-F1 **{evaluation.macro_f1:.4f}** on "
        f"{evaluation.examples} held-out examples (touched once, after model selection on validation).",
        "",
        "## Findings",
        "",
        *[f"- {note}" for note in findings],
        "",
    ]
    if calibration is not None:
        lines += ["## Calibration", "",
                  f"Temperature {calibration['temperature']:.3f}"
                  + (f" x (max p)^{calibration['temperature_exponent']:.3f}"
                     if calibration.get("temperature_exponent") else "")
                  + ", fitted on the validation split. Expected "
                  f"calibration error (15 bins) on the {calibration['test_examples']} test texts: "
                  f"{calibration['ece_before']:.4f} before, **{calibration['ece_after']:.4f}** after.", "",
                  f"![reliability]({bundle.RELIABILITY_FIGURE})", ""]
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
            lines += ["", f"![learning curve]({bundle.LEARNING_CURVE_FIGURE})", ""]
    lines += ["## Per class", "", "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, scores in evaluation.per_class.items():
        lines.append(f"| {label} | {scores['precision']:.3f} | {scores['recall']:.3f} | {scores['f1']:.3f} | "
                     f"{scores['support']} |")
    lines += [
        "",
        f"ONNX parity on {parity.examples} test inputs: max |dp| = {parity.max_abs_diff:.2e}, "
        f"argmax agreement {parity.argmax_agreement:.2%}.",
        "",
        f"![confusion]({bundle.CONFUSION_FIGURE})",
        "",
        f"Training curves of {member}:",
        "",
        f"![training curves]({bundle.CURVES_FIGURE})",
        "",
    ]
    writer.file(bundle.REPORT_MD).write_text("\n".join(lines))
