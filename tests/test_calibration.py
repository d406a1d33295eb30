"""Calibration: temperature scaling keeps the ranking and fixes over-confidence; ECE as defined."""

from __future__ import annotations

import numpy as np

from tlserve.trainer.calibration import apply_temperature, fit_temperature, log_loss
from tlserve.trainer.evaluation import expected_calibration_error, reliability


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes; right 70 % of the time but always about 99 % sure."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.7, truth, (truth + 1 + rng.integers(0, 2, n)) % 3)
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), predicted] += 5.5
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probabilities, truth


def test_ece_of_known_cases() -> None:
    truth = np.array([0, 0, 1, 1])
    certain_right = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(certain_right, truth) == 0.0
    certain_half_wrong = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert abs(expected_calibration_error(certain_half_wrong, truth) - 0.5) < 1e-12
    bins = reliability(certain_half_wrong, truth)
    assert bins == [{"low": bins[0]["low"], "high": 1.0, "count": 4, "confidence": 1.0, "accuracy": 0.5}]


def test_temperature_fitted_on_one_split_calibrates_another_and_keeps_accuracy() -> None:
    validation, validation_truth = _overconfident(2000, seed=1)
    test, test_truth = _overconfident(2000, seed=2)
    temperature = fit_temperature(validation, validation_truth)
    assert temperature > 1.5  # softened
    calibrated = apply_temperature(test, temperature)
    assert np.array_equal(calibrated.argmax(1), test.argmax(1))
    assert expected_calibration_error(test, test_truth) > 0.2
    assert expected_calibration_error(calibrated, test_truth) < 0.05
    assert log_loss(calibrated, test_truth) < log_loss(test, test_truth)


def test_a_calibrated_model_keeps_temperature_one() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    confidence = rng.uniform(0.5, 1.0, n)
    truth = (rng.random(n) < confidence).astype(int)  # right exactly as often as it says
    probabilities = np.stack([1 - confidence, confidence], axis=1)
    assert abs(fit_temperature(probabilities, truth) - 1.0) < 0.1
