"""Fitting the Keras models of `tlserve train`: features, the model of each mode, pooling mixtures.

`fit_model` encodes the splits with the shared `tlserve.features` (so serving sees the same
numbers), builds the model of `config.mode` and trains it with early stopping on the
validation split; with several pooling candidates it trains one model each and returns
one graph mixing their probabilities.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tlserve.features import EncodedBatch, FeatureConfig, Featurizer
from tlserve.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits
from tlserve.vector_store import VectorStore, VocabularyIndex

_LOGGER = logging.getLogger(__name__)

SIF_A = 1e-3


@dataclass
class FittedModel:
    """A trained Keras model with what it takes to encode texts for it."""

    keras_model: Any
    featurizer: Featurizer
    history: Any
    own_store: tuple[list[str], np.ndarray] | None = None
    mixture: list[tuple[str, float]] | None = None
    """(pooling, weight) of each mixed member; None for a single model."""


def sif_weights(featurizer: Featurizer, texts: list[str], size: int) -> np.ndarray:
    """a / (a + p(w)) per store row, p(w) counted over the training texts' tokens."""
    _, rows, _ = featurizer.lookup(texts)
    rows = rows[rows >= 0]
    frequency = np.bincount(rows, minlength=size).astype(np.float64) / max(1, len(rows))
    return (SIF_A / (SIF_A + frequency)).astype(np.float32)


def random_like(store: VectorStore, seed: int) -> np.ndarray:
    """Random vectors of the store's shape and per-dimension mean and spread (no transfer)."""
    matrix = np.asarray(store.matrix)
    rng = np.random.default_rng(seed + 7919)
    return (rng.standard_normal(matrix.shape) * matrix.std(0) + matrix.mean(0)).astype(np.float32)


def fit_model(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str],
              matrix: np.ndarray | None = None, verbose: int = 0) -> FittedModel:
    """Fits the model of `config.mode`; with several pooling candidates, one graph mixing them."""
    candidates = config.pooling_candidates()
    members = [_fit_one(replace(config, pooling=pooling), splits, store, labels, matrix, verbose)
               for pooling in candidates]
    if len(members) == 1:
        return members[0]
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(label, 0) for label in splits.validation.labels])
    validation = [predict(member, splits.validation.texts)[0] for member in members]
    weights = mixture_weights(validation, truth)
    for pooling, probabilities, weight in zip(candidates, validation, weights, strict=True):
        _LOGGER.info("pooling %s: validation accuracy %.4f, weight %.2f", pooling,
                     float(np.mean(probabilities.argmax(1) == truth)), weight)
    kept = [(member, weight, pooling) for member, weight, pooling in zip(members, weights, candidates, strict=True)
            if weight > 0]
    if len(kept) == 1:
        return kept[0][0]
    return _mix([m for m, _, _ in kept], [w for _, w, _ in kept], [p for _, _, p in kept])


def mixture_weights(probabilities: list[np.ndarray], truth: np.ndarray, step: float = 0.1) -> list[float]:
    """Weights of two members' probabilities that minimise the validation log-loss (grid of `step`).

    Log-loss is used rather than accuracy: it moves with every validation text's probability,
    not only with the few near the decision boundary, so it is much less noisy on a few
    hundred texts. Ties go to the most even mix. More than two members: equal weights.
    """
    if len(probabilities) != 2:
        return [1.0 / len(probabilities)] * len(probabilities)
    rows = np.arange(len(truth))
    first, second = probabilities[0][rows, truth], probabilities[1][rows, truth]
    best: tuple[float, float, float] | None = None
    for w in np.round(np.arange(0.0, 1.0 + step / 2, step), 6):
        loss = float(-np.mean(np.log(np.clip(w * first + (1 - w) * second, 1e-7, 1.0))))
        key = (round(loss, 6), abs(w - 0.5), float(w))
        if best is None or key < best:
            best = key
    assert best is not None
    return [best[2], round(1.0 - best[2], 6)]


def pooling_name(fitted: FittedModel) -> str:
    if fitted.mixture is not None:
        return " + ".join(f"{weight:.2f} x {pooling}" for pooling, weight in fitted.mixture)
    return fitted.featurizer.config.pooling


def _mix(members: list[FittedModel], weights: list[float], poolings: list[str]) -> FittedModel:
    """Members of different poolings as one graph: the widest featurizer feeds every member."""
    from tlserve.trainer import models

    widest = max(members, key=lambda m: m.featurizer.feature_size if m.featurizer.matrix is not None else 0)
    widths = [m.featurizer.feature_size for m in members] if widest.featurizer.config.static else []
    keras_model = models.build_mixture([m.keras_model for m in members], widths, weights)
    # The bundle's own store carries the vocabulary (identical for every member) and
    # the first member's adapted rows; the graph holds every member's embedding.
    return FittedModel(keras_model, widest.featurizer, members[0].history, members[0].own_store,
                       list(zip(poolings, weights, strict=True)))


def _fit_one(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str],
             matrix: np.ndarray | None = None, verbose: int = 0) -> FittedModel:
    """Encodes the splits and fits one model; `matrix` replaces the store's vectors."""
    from tlserve.trainer import models

    models.seed_everything(config.seed)
    table = np.asarray(store.matrix) if matrix is None else matrix
    preprocessor = Preprocessor(PreprocessingConfig.from_dict(
        {"case": store.manifest.case, "tokenizer": config.tokenizer, "max_tokens": config.max_tokens}))
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.array([index[label] for label in splits.train.labels])
    y_val = np.array([index.get(label, 0) for label in splits.validation.labels])
    if config.mode == "frozen":
        features = FeatureConfig(mode="frozen", pooling=config.resolved_pooling, sif=config.sif)
        featurizer = Featurizer(features, preprocessor, store.index, len(store), table)
        if config.sif:
            featurizer.sif_weights = sif_weights(featurizer, splits.train.texts, len(store))
        x_train = featurizer.encode(splits.train.texts).inputs
        x_val = featurizer.encode(splits.validation.texts).inputs
        keras_model = models.build_frozen(x_train["features"], len(labels), config.head)
        own_store = None
    else:
        words, own_matrix = finetune_vocabulary(store, table, preprocessor, splits.train.texts, config.top_words)
        features = FeatureConfig(mode="finetune", pooling=config.resolved_pooling,
                                 buckets=config.buckets, bigrams=config.bigrams, static=config.static)
        featurizer = Featurizer(features, preprocessor, VocabularyIndex.build(words), len(words),
                                matrix=table if config.static else None, store_index=store.index)
        rng = np.random.default_rng(config.seed)
        dim = own_matrix.shape[1]
        # Row 0 is padding; hashed rows start small, as fastText's do, so they add
        # little noise until training gives them meaning.
        buckets = rng.uniform(-1.0 / dim, 1.0 / dim, size=(config.buckets, dim)).astype(np.float32)
        embedding = np.concatenate([np.zeros((1, dim), np.float32), own_matrix, buckets])
        x_train = featurizer.encode(splits.train.texts).inputs
        x_val = featurizer.encode(splits.validation.texts).inputs
        keras_model = models.build_finetune(embedding, len(labels), config.resolved_pooling, config.head,
                                            x_train.get("features"), name=f"finetune_{config.resolved_pooling}")
        own_store = (words, own_matrix)
    history = models.fit(keras_model, x_train, y_train, x_val, y_val, len(labels), config.head, verbose=verbose)
    if own_store is not None:
        # The adapted table, as the bundle's own store (rows 1..V of the trained embedding).
        trained = keras_model.get_layer("embedding").get_weights()[0]
        own_store = (own_store[0], trained[1 : 1 + len(own_store[0])])
    return FittedModel(keras_model, featurizer, history, own_store)


def finetune_vocabulary(store: VectorStore, table: np.ndarray, preprocessor: Preprocessor, texts: list[str],
                        top_words: int) -> tuple[list[str], np.ndarray]:
    """The training texts' words found in the store plus the store's `top_words` most frequent."""
    tokens = [token for text in texts for token in preprocessor.tokens(text)]
    rows = store.index.lookup(list(dict.fromkeys(tokens)))
    keep = np.union1d(rows[rows >= 0], np.arange(min(top_words, len(store))))
    vocabulary = store.vocabulary
    return [vocabulary[i] for i in keep], np.asarray(table[keep], dtype=np.float32)


def predict(fitted: FittedModel, texts: list[str], batch_size: int = 1024) -> tuple[np.ndarray, EncodedBatch]:
    encoded = fitted.featurizer.encode(texts)
    from tlserve.trainer.models import keras_inputs

    probabilities = fitted.keras_model.predict(keras_inputs(encoded.inputs), batch_size=batch_size, verbose=0)
    return np.asarray(probabilities), encoded


