"""Calibration: temperature scaling keeps the ranking and fixes over-confidence; ECE as defined."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlserve.core.evaluation import expected_calibration_error, reliability
from tlserve.trainer.calibration import apply_temperature, fit_temperature, log_loss

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

    from tlserve.core.vector_store import VectorStore
    from tlserve.trainer.config import HeadConfig, TrainConfig
    from tlserve.trainer.fitting import _fit_one, out_of_fold, predict
    from tlserve.trainer.train import load_splits

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


def _distorted(n: int, seed: int, temperature: float, exponent: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities; the model answers what the adaptive map would turn back into them."""
    from tlserve.trainer.calibration import undo_temperature

    rng = np.random.default_rng(seed)
    truth_probabilities = rng.dirichlet(np.full(6, 0.4), n)
    truth = np.array([rng.choice(6, p=row) for row in truth_probabilities])
    return undo_temperature(truth_probabilities, temperature, exponent), truth


def test_adaptive_temperature_round_trips_keeps_ranking_and_is_chosen_only_when_it_helps() -> None:
    from tlserve.trainer.calibration import fit_adaptive_temperature, undo_temperature

    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.full(10, 0.3), 500)
    calibrated = apply_temperature(probabilities, 0.66, 0.25)
    assert np.array_equal(calibrated.argmax(1), probabilities.argmax(1))
    assert np.abs(undo_temperature(calibrated, 0.66, 0.25) - probabilities).max() < 1e-9

    # Miscalibration that depends on confidence: the adaptive form is kept and recovers it.
    answers, truth = _distorted(6000, 1, 0.7, 0.3)
    temperature, exponent = fit_adaptive_temperature(answers, truth)
    assert abs(exponent - 0.3) < 0.12 and abs(temperature - 0.7) < 0.1, (temperature, exponent)
    test, test_truth = _distorted(6000, 2, 0.7, 0.3)
    adaptive = apply_temperature(test, temperature, exponent)
    plain = apply_temperature(test, fit_temperature(answers, truth))
    assert log_loss(adaptive, test_truth) < log_loss(plain, test_truth)
    assert np.array_equal(adaptive.argmax(1), test.argmax(1))
    # One temperature explains it: the plain form is kept (exponent 0).
    answers, truth = _distorted(6000, 4, 0.7, 0.0)
    assert fit_adaptive_temperature(answers, truth)[1] == 0.0
    # Softer for middling answers than for certain ones (b < 0) is outside the form: one temperature.
    answers, truth = _distorted(6000, 5, 0.7, -0.3)
    assert fit_adaptive_temperature(answers, truth)[1] == 0.0


def test_the_adaptive_temperature_layer_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    import keras

    from tlserve.trainer.export import check_parity, to_onnx
    from tlserve.trainer.models import build_mixture

    inputs = keras.Input(shape=(4,), name="features")
    member = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Dense(8)(inputs)))
    graph = build_mixture([member], [1.0], temperature=0.66, exponent=0.25)
    features = np.random.default_rng(0).normal(0, 3, (64, 4)).astype(np.float32)
    raw = np.asarray(member(features, training=False))
    expected = apply_temperature(raw, 0.66, 0.25)
    assert np.abs(np.asarray(graph({"features": features}, training=False)) - expected).max() < 1e-5
    to_onnx(graph, {"features": features}, tmp_path / "model.onnx")
    parity = check_parity(graph, tmp_path / "model.onnx", {"features": features})
    assert parity.ok and parity.max_abs_diff < 1e-5


def test_members_mix_in_log_space_in_the_graph_as_in_calibration(tmp_path: Path) -> None:
    import keras

    from tlserve.trainer.calibration import mix
    from tlserve.trainer.export import check_parity, to_onnx
    from tlserve.trainer.models import build_mixture

    inputs = keras.Input(shape=(4,), name="features")
    members = [keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(keras.layers.Dense(8)(inputs)))
               for _ in range(2)]
    graph = build_mixture(members, [0.3, 0.7], temperature=0.8)
    features = np.random.default_rng(1).normal(0, 3, (64, 4)).astype(np.float32)
    raw = [np.asarray(member(features, training=False)) for member in members]
    mixed = mix(raw, [0.3, 0.7])
    # A weighted geometric mean, renormalised: not the arithmetic mean, and as sure as its members where they agree.
    geometric = raw[0].astype(np.float64) ** 0.3 * raw[1].astype(np.float64) ** 0.7
    assert np.abs(mixed - geometric / geometric.sum(1, keepdims=True)).max() < 1e-9
    assert np.abs(mixed - (0.3 * raw[0] + 0.7 * raw[1])).max() > 1e-3
    assert np.abs(mix([raw[0], raw[0]], [0.5, 0.5]) - raw[0]).max() < 1e-6
    expected = apply_temperature(mixed, 0.8)
    assert np.abs(np.asarray(graph({"features": features}, training=False)) - expected).max() < 1e-5
    to_onnx(graph, {"features": features}, tmp_path / "model.onnx")
    parity = check_parity(graph, tmp_path / "model.onnx", {"features": features})
    assert parity.ok and parity.max_abs_diff < 1e-5
