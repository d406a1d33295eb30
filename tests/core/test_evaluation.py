"""The shared evaluation (NumPy only) gives scikit-learn's figures, and fastText's precision and recall at k."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tlserve.core.evaluation import at_k, evaluate


def test_scores_equal_scikit_learns_with_unknown_and_unpredicted_labels() -> None:
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d", "e"]
    probabilities = rng.dirichlet(np.ones(5), size=400)
    probabilities[:, 4] = 0.0  # "e" is never predicted
    truth = [labels[i] for i in rng.integers(0, 5, 400)]
    truth[:7] = ["zzz"] * 7  # a label the model does not know
    ours = evaluate(truth, probabilities, labels)
    predicted = [labels[i] for i in probabilities.argmax(1)]
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, labels=labels,
                                                                     zero_division=0)
    assert ours.accuracy == accuracy_score(truth, predicted)
    assert abs(ours.macro_f1 - f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)) < 1e-12
    assert ours.confusion == confusion_matrix(truth, predicted, labels=labels).tolist()
    for i, label in enumerate(labels):
        scores = ours.per_class[label]
        assert abs(scores["precision"] - precision[i]) < 1e-12 and abs(scores["recall"] - recall[i]) < 1e-12
        assert abs(scores["f1"] - f1[i]) < 1e-12 and scores["support"] == support[i]


def test_precision_and_recall_at_k_count_as_fasttext_does() -> None:
    labels = ["a", "b", "c"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    gold = [{"a"}, {"b"}, {"a", "b"}]
    assert at_k(gold, probabilities, labels, 1) == (2 / 3, 2 / 4)
    assert at_k(gold, probabilities, labels, 2) == (4 / 6, 4 / 4)
