"""Calibration: temperature scaling keeps the ranking and fixes over-confidence; ECE as defined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlserve.trainer.calibration import apply_temperature, fit_temperature, log_loss
from tlserve.trainer.evaluation import expected_calibration_error, reliability

from conftest import WORDNET_SAMPLE


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


def test_lazy_adam_moves_only_the_rows_a_step_touches() -> None:
    """Step 1 touches row 1, step 2 row 3: Keras's Adam still moves row 1 at step 2 (its momentum), the lazy one
    leaves it; a row's first update is the same in both."""
    import keras
    import tensorflow as tf

    from tlserve.trainer.models import lazy_adam

    def run(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
        table = keras.Variable(np.arange(24, dtype=np.float32).reshape(6, 4) / 10)
        seen = []
        for row in (1, 3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(tf.gather(table.value, [row])))
            gradient = tape.gradient(loss, table.value)
            assert isinstance(gradient, tf.IndexedSlices)
            optimizer.apply_gradients([(gradient, table)])
            seen.append(np.array(table.numpy()))
        return seen

    start = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
    dense_1, dense_2 = run(keras.optimizers.Adam(0.1))
    lazy_1, lazy_2 = run(lazy_adam(0.1))
    np.testing.assert_allclose(lazy_1, dense_1, rtol=1e-6)
    assert not np.allclose(dense_2[1], dense_1[1])  # dense Adam keeps moving row 1
    np.testing.assert_array_equal(lazy_2[1], lazy_1[1])  # lazy Adam does not
    np.testing.assert_allclose(lazy_2[3], dense_2[3], rtol=1e-6)
    untouched = [0, 2, 4, 5]
    np.testing.assert_array_equal(lazy_2[untouched], start[untouched])


def test_out_of_fold_answers_are_held_out_and_cover_every_training_text(glove_store: Path) -> None:
    """The calibration data of a small validation split: every training text answered by a copy that did not see it."""
    from dataclasses import replace

    from tlserve.trainer.config import HeadConfig, TrainConfig
    from tlserve.trainer.fitting import _fit_one, out_of_fold, predict
    from tlserve.trainer.train import load_splits
    from tlserve.vector_store import VectorStore

    config = TrainConfig(data=WORDNET_SAMPLE, vectors=glove_store, repository=Path("unused"), model="m",
                         mode="frozen", head=HeadConfig(hidden=32, epochs=8, batch_size=64, patience=2),
                         progress=False, calibration_folds=3)
    store = VectorStore(glove_store)
    splits = load_splits(config)
    labels = sorted(set(splits.train.labels))
    truth = np.array([labels.index(label) for label in splits.train.labels])
    member = _fit_one(replace(config, pooling="mean_max"), splits, store, labels)
    in_sample = predict(member, splits.train.texts)[0]
    held_out = out_of_fold(config, splits, store, labels, ["mean_max"], [member], None, None)[0]
    assert held_out.shape == (len(splits.train), len(labels))
    np.testing.assert_allclose(held_out.sum(1), 1.0, atol=1e-5)  # every row answered
    in_sample_accuracy = float(np.mean(in_sample.argmax(1) == truth))
    held_out_accuracy = float(np.mean(held_out.argmax(1) == truth))
    assert 0.3 < held_out_accuracy < in_sample_accuracy  # learned, and not memorised
