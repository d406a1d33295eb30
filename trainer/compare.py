"""`tlserve train --compare`: peers and ablations on the same split, in the same run.

Systems (the test split is scored once per system):

- the other tlserve transfer mode;
- each tlserve mode on random vectors of the store's shape (no transfer);
- the peers of `tlserve.trainer.peers`, each on its own natural input (raw texts, its own
  tokenisation, no token cap) and with its own tuning: TF-IDF + logistic regression,
  fastText, fastText with the same pretrained vectors (optional extra ``compare``);
- a learning curve: 1, 5, 10, 25, 50 and 100 % of the training labels, pretrained vs random.

One split says little about small differences: `tlserve evaluate` repeats all of this over
seeded splits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np

from tlserve.core.evaluation import Evaluation, evaluate
from tlserve.core.labelled import is_chinese
from tlserve.core.vector_store import VectorStore
from tlserve.trainer import peers
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits, subsample
from tlserve.trainer.fitting import fit_model, predict, random_like

_LOGGER = logging.getLogger(__name__)

CURVE_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)


def _scores(evaluation: Evaluation, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1, "seconds": round(seconds, 1), **extra}


def _tlserve(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], matrix: np.ndarray | None
             ) -> Evaluation:
    fitted = fit_model(replace(config, transfer_check=False), splits, store, labels, matrix)
    probabilities, encoded = predict(fitted, splits.test.texts)
    return evaluate(splits.test.labels, probabilities, labels, encoded)


def learning_curve(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], random_matrix: np.ndarray
                   ) -> list[dict[str, Any]]:
    points = []
    for fraction in CURVE_FRACTIONS:
        train = splits.train.subset(subsample(splits.train.labels, fraction, config.seed))
        validation = splits.validation.subset(subsample(splits.validation.labels, fraction, config.seed))
        part = Splits(train, validation, splits.test)
        pretrained = _tlserve(config, part, store, labels, None)
        random = _tlserve(config, part, store, labels, random_matrix)
        points.append({"fraction": fraction, "examples": len(train), "pretrained": pretrained.accuracy,
                       "random": random.accuracy})
        _LOGGER.info("learning curve %.0f%%: pretrained %.4f, random %.4f", fraction * 100, pretrained.accuracy,
                     random.accuracy)
    return points


def run(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], evaluation: Evaluation,
        curve: bool = True) -> dict[str, Any]:
    systems: dict[str, dict[str, Any]] = {f"tlserve_{config.mode}": _scores(evaluation, 0.0)}
    other = "frozen" if config.mode == "finetune" else "finetune"
    started = time.perf_counter()
    systems[f"tlserve_{other}"] = _scores(_tlserve(replace(config, mode=other), splits, store, labels, None),
                                          time.perf_counter() - started)
    random_matrix = random_like(store, config.seed)
    for mode in (config.mode, other):  # no transfer: the same model of each mode on random vectors
        started = time.perf_counter()
        systems[f"random_vectors_{mode}"] = _scores(
            _tlserve(replace(config, mode=mode), splits, store, labels, random_matrix), time.perf_counter() - started)
    chinese = is_chinese(splits.train.texts)
    results = {"tfidf_logreg": peers.tfidf_logreg(splits, labels, chinese),
               **peers.fasttext_peers(splits, labels, store, config.seed, chinese)}
    for name, peer in results.items():
        systems[name] = _scores(evaluate(splits.test.labels, peer.probabilities, labels), peer.seconds,
                                **peer.chosen)
    tlserve_best = max(v["accuracy"] for k, v in systems.items() if k.startswith("tlserve_"))
    peer_accuracy = {k: v["accuracy"] for k, v in systems.items() if k in results}
    result: dict[str, Any] = {
        "mode": config.mode,
        "systems": systems,
        "best_tlserve": tlserve_best,
        "best_peer": max(peer_accuracy.values()) if peer_accuracy else None,
        "best_peer_name": max(peer_accuracy, key=lambda k: peer_accuracy[k]) if peer_accuracy else None,
        "train_examples": len(splits.train),
    }
    for name, scores in systems.items():
        _LOGGER.info("compare %-22s accuracy %.4f  macro-F1 %.4f", name, scores["accuracy"], scores["macro_f1"])
    if curve:
        result["learning_curve"] = learning_curve(config, splits, store, labels, random_matrix)
    return result
