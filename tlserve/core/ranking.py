"""Labels ranked by probability: the one ordering every answer uses (the server's front ends, offline scoring,
`tlserve test` and `predict`)."""

from __future__ import annotations

import numpy as np


def rank(probabilities: np.ndarray, k: int = 0) -> np.ndarray:
    """int64 [n, k]: each row's label indices by decreasing probability, the first `k` (0 or more than the labels:
    all). Ties keep label order (a stable sort of the negated rows)."""
    labels = probabilities.shape[1]
    k = labels if k <= 0 or k >= labels else k
    order = np.argsort(-probabilities, axis=1, kind="stable")
    return order[:, :k] if k < labels else order


def top(probabilities: np.ndarray, k: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`rank`'s indices and their probabilities."""
    order = rank(probabilities, k)
    return order, np.take_along_axis(probabilities, order, axis=1)
