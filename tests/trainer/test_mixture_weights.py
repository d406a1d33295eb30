"""The finetune pooling mixture's weights: chosen by validation log-loss, ties to the even mix."""

from __future__ import annotations

import numpy as np

from tlserve.trainer.calibration import mixture_weights


def test_a_better_calibrated_member_gets_the_weight() -> None:
    truth = np.array([0, 1, 0, 1])
    sharp = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    vague = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])
    assert mixture_weights([sharp, vague], truth) == [1.0, 0.0]
    assert mixture_weights([vague, sharp], truth) == [0.0, 1.0]


def test_members_that_err_differently_are_mixed_and_ties_go_even() -> None:
    truth = np.array([0, 1])
    a = np.array([[0.99, 0.01], [0.7, 0.3]])  # confident right, then wrong
    b = np.array([[0.3, 0.7], [0.01, 0.99]])  # wrong, then confident right
    w = mixture_weights([a, b], truth)
    assert 0 < w[0] < 1 and abs(sum(w) - 1) < 1e-9
    same = np.array([[0.8, 0.2], [0.3, 0.7]])
    assert mixture_weights([same, same], truth) == [0.5, 0.5]


def test_three_members_get_weights_on_the_simplex() -> None:
    truth = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    bad = np.array([[0.2, 0.8], [0.8, 0.2], [0.2, 0.8], [0.8, 0.2]])
    w = mixture_weights([bad, good, bad], truth)
    assert w == [0.0, 1.0, 0.0]
