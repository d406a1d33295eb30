"""The Keras models of the two transfer modes, and their seeded training.

- frozen: standardised pooled store vectors -> MLP head. Only the head is trained and
  exported; the store stays shared.
- finetune: an embedding layer initialised from the store (plus hashed rows for unknown
  words and bigrams) -> word dropout -> masked mean (or mean+max) pooling -> MLP. The
  whole graph is trained, so the pretrained vectors are adapted to the task.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlserve.trainer.config import HeadConfig

_LOGGER = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow and asks TF for deterministic kernels."""
    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _head(x: Any, n_classes: int, config: HeadConfig) -> Any:
    import keras

    regularizer = keras.regularizers.L2(config.l2) if config.l2 > 0 else None
    if config.hidden > 0:
        x = keras.layers.Dense(config.hidden, activation="relu", kernel_regularizer=regularizer, name="hidden")(x)
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    return keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer, name="probabilities")(x)


def build_frozen(features: np.ndarray, n_classes: int, config: HeadConfig) -> Any:
    import keras

    inputs = keras.Input(shape=(features.shape[1],), dtype="float32", name="features")
    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(features)
    outputs = _head(normalize(inputs), n_classes, config)
    return keras.Model(inputs, outputs, name="frozen_head")


def build_finetune(table: np.ndarray, n_classes: int, pooling: str, config: HeadConfig,
                   static_features: np.ndarray | None = None, name: str = "finetune") -> Any:
    """Token ids (and, with `static_features`, the shared store's pooled vectors) -> probabilities."""
    import keras
    from keras import ops

    class WordDropout(keras.layers.Layer):
        """Zeroes (pads out) each token id with probability `rate`, in training only."""

        def __init__(self, rate: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.rate = rate
            self.seed = keras.random.SeedGenerator(1337)

        def call(self, ids: Any, training: bool | None = None) -> Any:
            if not training or self.rate <= 0:
                return ids
            keep = keras.random.uniform(ops.shape(ids), seed=self.seed) >= self.rate
            return ops.where(keep, ids, ops.zeros_like(ids))

    class MaskedPooling(keras.layers.Layer):
        """Mean (or mean and max) of the embeddings of non-padding ids."""

        def __init__(self, pooling: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pooling = pooling

        def call(self, embedded: Any, ids: Any) -> Any:
            mask = ops.cast(ops.expand_dims(ops.greater(ids, 0), -1), embedded.dtype)
            count = ops.maximum(ops.sum(mask, axis=1), 1.0)
            mean = ops.sum(embedded * mask, axis=1) / count
            if self.pooling != "mean_max":
                return mean
            # Padding gets a large negative value so it never wins the max; an all-padding
            # text then gets 0, as the frozen features do.
            masked = embedded * mask + (mask - 1.0) * 1e9
            maximum = ops.max(masked, axis=1) * ops.cast(ops.sum(mask, axis=1) > 0, embedded.dtype)
            return ops.concatenate([mean, maximum], axis=-1)

    ids = keras.Input(shape=(None,), dtype="int64", name="token_ids")
    dropped = WordDropout(config.word_dropout, name="word_dropout")(ids)
    embedded = keras.layers.Embedding(
        table.shape[0], table.shape[1], embeddings_initializer=keras.initializers.Constant(table), name="embedding"
    )(dropped)
    pooled = MaskedPooling(pooling, name="pooling")(embedded, dropped)
    inputs = [ids]
    if static_features is not None:
        # The frozen channel: pooled vectors of the shared store, standardised.
        features = keras.Input(shape=(static_features.shape[1],), dtype="float32", name="features")
        normalize = keras.layers.Normalization(name="standardize")
        normalize.adapt(static_features)
        pooled = keras.layers.Concatenate(name="channels")([pooled, normalize(features)])
        inputs.append(features)
    outputs = _head(pooled, n_classes, config)
    return keras.Model(inputs, outputs, name=name)


def build_mixture(members: list[Any], feature_widths: list[int], weights: list[float]) -> Any:
    """One graph whose probabilities are the `weights`-weighted sum of trained finetune `members`'.

    All members read the same token ids; member i reads the first `feature_widths[i]`
    columns of the static features (the mean+max layout starts with the mean), so one
    featurizer feeds them all. An empty `feature_widths` means no static input.
    """
    import keras

    class FirstColumns(keras.layers.Layer):
        def __init__(self, width: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.width = width

        def call(self, x: Any) -> Any:
            return x[:, : self.width]

    class WeightedSum(keras.layers.Layer):
        def __init__(self, mix: list[float], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.mix = [float(w) for w in mix]

        def call(self, inputs: list[Any]) -> Any:
            total = inputs[0] * self.mix[0]
            for weight, x in zip(self.mix[1:], inputs[1:], strict=True):
                total = total + x * weight
            return total

    ids = keras.Input(shape=(None,), dtype="int64", name="token_ids")
    inputs = [ids]
    features = None
    if feature_widths:
        features = keras.Input(shape=(max(feature_widths),), dtype="float32", name="features")
        inputs.append(features)
    outputs = []
    for i, member in enumerate(members):
        if features is None:
            outputs.append(member(ids))
        else:
            outputs.append(member([ids, FirstColumns(feature_widths[i], name=f"features_{i}")(features)]))
    mixed = WeightedSum(weights, name="probabilities")(outputs)
    return keras.Model(inputs, mixed, name="finetune_mixture")


def auto_batch_size(examples: int) -> int:
    return int(min(256, max(16, examples // 100)))


def class_weight_map(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    weights = len(y) / (n_classes * np.maximum(counts, 1))
    return {i: float(w) for i, w in enumerate(weights)}


@dataclass
class History:
    loss: list[float]
    val_loss: list[float]
    accuracy: list[float]
    val_accuracy: list[float]
    best_epoch: int


def keras_inputs(inputs: dict[str, np.ndarray]) -> Any:
    """What a Keras model takes: the array itself for one input, the dict by name for several."""
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def fit(
    model: Any,
    x_train: dict[str, np.ndarray],
    y_train: np.ndarray,
    x_val: dict[str, np.ndarray],
    y_val: np.ndarray,
    n_classes: int,
    config: HeadConfig,
    verbose: int = 0,
) -> History:
    """Trains with Adam and early stopping on validation loss; restores the best weights."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batch_size = config.batch_size or auto_batch_size(len(y_train))
    monitor = config.monitor
    if monitor == "auto":
        monitor = "val_accuracy" if any(t.dtype == "int64" for t in model.inputs) else "val_loss"
    stopper = keras.callbacks.EarlyStopping(
        monitor=monitor, patience=config.patience, restore_best_weights=True, verbose=0,
        mode="max" if monitor == "val_accuracy" else "min",
    )
    result = model.fit(
        keras_inputs(x_train), y_train,
        validation_data=(keras_inputs(x_val), y_val),
        epochs=config.epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=[stopper],
        class_weight=class_weight_map(y_train, n_classes) if config.class_weights else None,
        verbose=verbose,
    )
    h = result.history
    best = int(np.argmax(h["val_accuracy"]) if monitor == "val_accuracy" else np.argmin(h["val_loss"]))
    return History(h["loss"], h["val_loss"], h["accuracy"], h["val_accuracy"], best)
