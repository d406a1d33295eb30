"""Calibration of a model's probabilities on the validation split: mixture weights and temperature.

A network trained to low loss on a few thousand labels answers 0.999 on most texts, and a
service that thresholds on its probabilities then acts on numbers that mean little. Two
steps, both fitted on the validation split only (the test split stays untouched):

- `mixture_weights`: how much each member of a mixed model (poolings, the lexical channel)
  contributes, the weights on a grid of the simplex that minimise the validation log-loss.
- `fit_temperature`: temperature scaling (Guo et al., 2017), p' = softmax(log p / T) with
  the T that minimises the validation log-loss. It rescales confidence and keeps every
  text's ranking of labels, so accuracy is unchanged.
"""

from __future__ import annotations

import itertools

import numpy as np

# Temperatures searched, on a log scale: from sharpening x4 to softening x20.
_LOG_T_RANGE = (np.log(0.25), np.log(20.0))


def log_loss(probabilities: np.ndarray, truth: np.ndarray) -> float:
    rows = np.arange(len(truth))
    return float(-np.mean(np.log(np.clip(probabilities[rows, truth], 1e-12, 1.0))))


def _simplex(members: int, step: float) -> list[np.ndarray]:
    parts = round(1.0 / step)
    return [np.array(c, dtype=np.float64) / parts
            for c in itertools.product(range(parts + 1), repeat=members) if sum(c) == parts]


def mixture_weights(probabilities: list[np.ndarray], truth: np.ndarray, step: float = 0.1) -> list[float]:
    """Weights (summing to 1, multiples of `step`) of the members' probabilities that minimise the
    validation log-loss; ties go to the most even mix.

    Log-loss rather than accuracy: it moves with every validation text's probability, not
    only with the few near the decision boundary, so it is much less noisy on a few
    hundred texts.
    """
    if len(probabilities) == 1:
        return [1.0]
    if len(probabilities) > 4:  # the grid grows too fast; an even mix
        return [1.0 / len(probabilities)] * len(probabilities)
    rows = np.arange(len(truth))
    truth_columns = np.stack([p[rows, truth] for p in probabilities], axis=1)
    best: tuple[float, float, tuple[float, ...]] | None = None
    for weights in _simplex(len(probabilities), step):
        loss = float(-np.mean(np.log(np.clip(truth_columns @ weights, 1e-12, 1.0))))
        key = (round(loss, 6), float(np.abs(weights - weights.mean()).sum()), tuple(weights.round(6)))
        if best is None or key < best:
            best = key
    assert best is not None
    return [float(w) for w in best[2]]


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), as the exported graph computes it."""
    logits = np.log(np.maximum(probabilities.astype(np.float64), 1e-30)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The T that minimises the validation log-loss of softmax(log p / T) (bounded 1-D search)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: log_loss(apply_temperature(probabilities, float(np.exp(log_t))), truth),
                             bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-3})
    temperature = float(np.exp(result.x))
    # Keep T = 1 unless scaling really helps: no layer for a change within noise.
    if log_loss(apply_temperature(probabilities, temperature), truth) > log_loss(probabilities, truth) - 1e-4:
        return 1.0
    return round(temperature, 4)
