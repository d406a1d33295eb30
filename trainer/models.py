"""The Keras models of the two transfer modes, and their seeded training.

- frozen: standardised pooled store vectors -> MLP head. Only the head is trained and
  exported; the store stays shared.
- finetune: the embedding rows of the training texts' words, initialised from the store, and
  hashed rows for their unknown words and bigrams -> word dropout -> masked mean (or
  mean+max) pooling, together with the pooled shared vectors of the words training never
  saw -> MLP. The whole graph is trained, so the pretrained vectors are adapted to the task.
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


def _int8_rows_layer() -> Any:
    """A Keras layer gathering rows of an int8 table and scaling them back to float32 (`trainer.quantization`):
    per row (`scale` [rows]) or per column (`scale` [columns])."""
    import keras
    import tensorflow as tf
    from keras import ops

    class Int8Rows(keras.layers.Layer):
        def __init__(self, q: np.ndarray, scale: np.ndarray, per_row: bool, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.per_row = per_row
            self.q = self.add_weight(shape=q.shape, dtype="int8", trainable=False,
                                     initializer=keras.initializers.Constant(q), name="int8_rows")
            self.scale = self.add_weight(shape=scale.shape, trainable=False,
                                         initializer=keras.initializers.Constant(scale), name="scale")

        def call(self, ids: Any) -> Any:
            # tf.gather, not ops.take: take wraps negative ids first, which exports as eight more graph
            # nodes per lookup that every served call runs; token and n-gram ids are never negative.
            rows = ops.cast(tf.gather(self.q, ids), "float32")
            if self.per_row:
                return rows * ops.expand_dims(tf.gather(self.scale, ids), -1)
            return rows * self.scale

    return Int8Rows


def build_frozen(features: np.ndarray, n_classes: int, config: HeadConfig) -> Any:
    import keras

    inputs = keras.Input(shape=(features.shape[1],), dtype="float32", name="features")
    normalize = keras.layers.Normalization(name="standardize")
    normalize.adapt(features)
    outputs = _head(normalize(inputs), n_classes, config)
    return keras.Model(inputs, outputs, name="frozen_head")


def build_finetune(table: np.ndarray, n_classes: int, pooling: str, config: HeadConfig,
                   static_features: np.ndarray | None = None, name: str = "finetune",
                   int8_table: tuple[np.ndarray, np.ndarray] | None = None) -> Any:
    """Token ids, the pooled shared vectors of untrained words (and, with `static_features`, the shared
    store's pooled vectors) -> probabilities.

    `table` holds the rows of `tlserve.core.features`' token ids: zeros for padding, for a word read
    from the shared store and for an untrained hashed row, then the trained rows. Only trained
    ids occur in training texts, so the three zero rows never get a gradient and stay zero.
    """
    import keras
    from keras import ops

    from tlserve.core.features import BASE_ID, BASE_MAX_INPUT, BASE_SUM_INPUT, FINETUNE_INPUT, PADDING_ID

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
        """Mean (or mean and max) over a text's tokens: the trained rows and the shared vectors' sum (and max)."""

        def __init__(self, pooling: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.pooling = pooling

        def call(self, embedded: Any, ids: Any, base_sum: Any, base_max: Any = None) -> Any:
            counted = ops.cast(ops.expand_dims(ops.greater(ids, PADDING_ID), -1), embedded.dtype)
            tokens = ops.sum(counted, axis=1)
            mean = (ops.sum(embedded * counted, axis=1) + base_sum) / ops.maximum(tokens, 1.0)
            if self.pooling != "mean_max":
                return mean
            # The table's own rows (trained, or hashed and zero) take part in the max; a shared-store
            # word's zero row does not: its vector is in base_max. Padding gets a large negative value
            # so it never wins; an all-padding text then gets 0, as the frozen features do.
            own = ops.cast(ops.expand_dims(ops.greater(ids, BASE_ID), -1), embedded.dtype)
            masked = embedded * own + (own - 1.0) * 1e9
            maximum = ops.maximum(ops.max(masked, axis=1), base_max) * ops.cast(tokens > 0, embedded.dtype)
            return ops.concatenate([mean, maximum], axis=-1)

    dim = table.shape[1]
    ids = keras.Input(shape=(None,), dtype="int64", name=FINETUNE_INPUT)
    base_sum = keras.Input(shape=(dim,), dtype="float32", name=BASE_SUM_INPUT)
    inputs = [ids, base_sum]
    dropped = WordDropout(config.word_dropout, name="word_dropout")(ids)
    if int8_table is None:
        embedded = keras.layers.Embedding(table.shape[0], dim, embeddings_initializer=keras.initializers.Constant(
            table), name="embedding")(dropped)
    else:
        embedded = _int8_rows_layer()(*int8_table, per_row=True, name="embedding")(dropped)
    if pooling == "mean_max":
        base_max = keras.Input(shape=(dim,), dtype="float32", name=BASE_MAX_INPUT)
        inputs.append(base_max)
        pooled = MaskedPooling(pooling, name="pooling")(embedded, dropped, base_sum, base_max)
    else:
        pooled = MaskedPooling(pooling, name="pooling")(embedded, dropped, base_sum)
    if static_features is not None:
        # The frozen channel: pooled vectors of the shared store, standardised.
        features = keras.Input(shape=(static_features.shape[1],), dtype="float32", name="features")
        normalize = keras.layers.Normalization(name="standardize")
        normalize.adapt(static_features)
        pooled = keras.layers.Concatenate(name="channels")([pooled, normalize(features)])
        inputs.append(features)
    outputs = _head(pooled, n_classes, config)
    return keras.Model(inputs, outputs, name=name)


def quantized_finetune(model: Any, n_classes: int, pooling: str, config: HeadConfig,
                       static_features: np.ndarray | None = None) -> Any:
    """The trained finetune `model` with its embedding table in int8 (every other weight copied)."""
    from tlserve.trainer.quantization import quantize_rows

    table = np.asarray(model.get_layer("embedding").embeddings.numpy())
    quantized = build_finetune(table, n_classes, pooling, config, static_features, name=model.name,
                               int8_table=quantize_rows(table))
    for layer in model.layers:
        if layer.weights and layer.name != "embedding":
            quantized.get_layer(layer.name).set_weights(layer.get_weights())
    return quantized


def build_lexical(coefficients: np.ndarray, intercept: np.ndarray) -> Any:
    """The lexical channel: a trained linear classifier over TF-IDF n-gram weights as a graph.

    `coefficients` [n-grams, classes] become an int8 table (row 0: padding, one scale per class)
    gathered by n-gram id and summed with the TF-IDF weights: the sparse product x . W without a
    dense x. `fit_lexical` reports the quantized classifier, so this graph is what it measured.
    """
    import keras
    from keras import ops

    from tlserve.trainer.quantization import quantize_columns

    class WeightedRows(keras.layers.Layer):
        def __init__(self, bias: np.ndarray, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.bias = [float(b) for b in bias]

        def call(self, rows: Any, weights: Any) -> Any:
            return ops.sum(rows * ops.expand_dims(weights, -1), axis=1) + ops.convert_to_tensor(self.bias)

    table = np.concatenate([np.zeros((1, coefficients.shape[1]), np.float32), coefficients.astype(np.float32)])
    ids = keras.Input(shape=(None,), dtype="int64", name="lexicon_ids")
    weights = keras.Input(shape=(None,), dtype="float32", name="lexicon_weights")
    rows = _int8_rows_layer()(*quantize_columns(table), per_row=False, name="lexicon_classifier")(ids)
    logits = WeightedRows(intercept, name="lexicon_logits")(rows, weights)
    return keras.Model([ids, weights], keras.layers.Softmax(name="probabilities")(logits), name="lexical")


def build_mixture(members: list[Any], weights: list[float], temperature: float = 1.0, exponent: float = 0.0) -> Any:
    """One graph: the `weights`-weighted log-space mix of trained `members`' probabilities, temperature-scaled.

    Members read graph inputs by name (token ids, pooled features, the lexical channel's two);
    a member reading fewer pooled-feature columns than the widest gets the first ones (the
    mean+max layout starts with the mean), so one featurizer feeds them all. With
    `temperature` T != 1 the mix becomes softmax(log p / T): the same ranking, calibrated
    confidence (T is fitted on the validation split).
    """
    import keras
    from keras import ops

    class FirstColumns(keras.layers.Layer):
        def __init__(self, width: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.width = width

        def call(self, x: Any) -> Any:
            return x[:, : self.width]

    class LogSpaceMix(keras.layers.Layer):
        """softmax(sum_i w_i log p_i), as `tlserve.trainer.calibration.mix` computes it."""

        def __init__(self, mix: list[float], **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.mix = [float(w) for w in mix]

        def call(self, inputs: list[Any]) -> Any:
            total = ops.log(ops.maximum(inputs[0], 1e-30)) * self.mix[0]
            for weight, x in zip(self.mix[1:], inputs[1:], strict=True):
                total = total + ops.log(ops.maximum(x, 1e-30)) * weight
            return ops.softmax(total, axis=-1)

    class Temperature(keras.layers.Layer):
        def __init__(self, value: float, exponent: float = 0.0, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.value = float(value)
            self.exponent = float(exponent)

        def call(self, probabilities: Any) -> Any:
            # 1e-30: a probability that underflowed to 0 stays the least likely, and finite.
            log_p = ops.log(ops.maximum(probabilities, 1e-30))
            if self.exponent == 0.0:
                return ops.softmax(log_p / self.value, axis=-1)
            # t = T * (max p)^b per text: one positive temperature per row keeps its ranking.
            t = self.value * ops.exp(self.exponent * ops.max(log_p, axis=-1, keepdims=True))
            return ops.softmax(log_p / t, axis=-1)

    graph_inputs: dict[str, Any] = {}
    widths: dict[str, int] = {}
    for member in members:
        for tensor in member.inputs:
            name = tensor.name.split(":")[0]
            width = tensor.shape[1]
            widths[name] = max(widths.get(name, 0), width or 0)
            if name not in graph_inputs:
                graph_inputs[name] = tensor.dtype
    inputs = {name: keras.Input(shape=(widths[name] or None,), dtype=dtype, name=name)
              for name, dtype in graph_inputs.items()}
    outputs = []
    for i, member in enumerate(members):
        fed = []
        for tensor in member.inputs:
            name = tensor.name.split(":")[0]
            x = inputs[name]
            if tensor.shape[1] is not None and tensor.shape[1] < widths[name]:
                x = FirstColumns(tensor.shape[1], name=f"{name}_{i}")(x)
            fed.append(x)
        outputs.append(member(fed[0] if len(fed) == 1 else fed))
    mixed = outputs[0] if len(outputs) == 1 else LogSpaceMix(weights, name="mixture")(outputs)
    if temperature != 1.0 or exponent != 0.0:
        mixed = Temperature(temperature, exponent, name="temperature")(mixed)
    return keras.Model(list(inputs.values()), mixed, name="mixture")


def lazy_adam(learning_rate: float) -> Any:
    """Adam that, for a gradient over a few rows of a table (an embedding lookup), updates only those rows'
    moments and values, as fastText's sparse SGD touches only the words of the text.

    Keras's Adam decays and applies every row's moments at every step: with 100,000 trained rows
    of an embedding, that dense update was most of each step. Rows not in a batch keep their
    moments (they are not decayed), the "lazy" variant of Adam.
    """
    import keras
    import tensorflow as tf

    class LazyAdam(keras.optimizers.Adam):
        def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
            if not isinstance(gradient, tf.IndexedSlices):
                super().update_step(gradient, variable, learning_rate)
                return
            rows, position = tf.unique(gradient.indices)
            values = tf.math.unsorted_segment_sum(tf.cast(gradient.values, variable.dtype), position,
                                                  tf.shape(rows)[0])
            step = tf.cast(self.iterations + 1, variable.dtype)
            alpha = (tf.cast(learning_rate, variable.dtype) * tf.sqrt(1.0 - tf.pow(tf.cast(self.beta_2, variable.dtype),
                     step)) / (1.0 - tf.pow(tf.cast(self.beta_1, variable.dtype), step)))
            m = self._momentums[self._get_variable_index(variable)]
            v = self._velocities[self._get_variable_index(variable)]
            m_rows = self.beta_1 * tf.gather(_tf(m), rows) + (1.0 - self.beta_1) * values
            v_rows = self.beta_2 * tf.gather(_tf(v), rows) + (1.0 - self.beta_2) * tf.square(values)
            self.assign(m, tf.IndexedSlices(m_rows, rows))
            self.assign(v, tf.IndexedSlices(v_rows, rows))
            self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))

    def _tf(variable: Any) -> Any:
        return variable.value if isinstance(variable, keras.Variable) else variable

    return LazyAdam(learning_rate)


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


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, window: int = 50
                   ) -> list[np.ndarray]:
    """One epoch of batches of row indices: shuffled, then sorted by length within windows of `window`
    batches, so a batch holds texts of similar length and pads little; batch order shuffled again."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = batch_size * window
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _token_batches(x: dict[str, np.ndarray], y: np.ndarray, batch_size: int, seed: int,
                   sample_weight: np.ndarray | None, shuffle: bool) -> Any:
    """A tf.data pipeline for Keras `fit` that cuts each token-id input to the longest text of the batch.

    Token ids are padded to the longest text of the whole split; a long-tailed split (e-mails)
    would otherwise make every step as costly as its longest document. The signature leaves
    the length open, so batches of any length pass (Keras would fix it from the first batches).
    """
    import tensorflow as tf

    ids = [name for name, array in x.items() if array.dtype == np.int64]
    lengths = np.max([(x[name] > 0).sum(1) for name in ids], axis=0)
    rng = np.random.default_rng(seed)

    def batches() -> Any:
        if shuffle:
            plan = length_batches(lengths, batch_size, rng)
        else:
            order = np.argsort(lengths, kind="stable")
            plan = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for rows in plan:
            width = max(1, int(lengths[rows].max()))
            inputs = {name: (array[rows, :width] if name in ids else array[rows]) for name, array in x.items()}
            if sample_weight is None:
                yield keras_inputs(inputs), y[rows]
            else:
                yield keras_inputs(inputs), y[rows], sample_weight[rows]

    specs = {name: tf.TensorSpec((None, None) if name in ids else (None, array.shape[1]), tf.as_dtype(array.dtype),
                                 name=name) for name, array in x.items()}
    signature: tuple[Any, ...] = (keras_inputs(specs), tf.TensorSpec((None,), tf.as_dtype(y.dtype)))
    if sample_weight is not None:
        signature = (*signature, tf.TensorSpec((None,), tf.float32))
    count = len(length_batches(lengths, batch_size, np.random.default_rng(0))) if shuffle else \
        -(-len(lengths) // batch_size)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(count)).prefetch(2)


def keras_inputs(inputs: dict[str, np.ndarray]) -> Any:
    """What a Keras model takes: the array itself for one input, the dict by name for several."""
    return next(iter(inputs.values())) if len(inputs) == 1 else inputs


def fit(
    model: Any,
    x_train: dict[str, np.ndarray],
    y_train: np.ndarray,
    x_val: dict[str, np.ndarray] | None,
    y_val: np.ndarray | None,
    n_classes: int,
    config: HeadConfig,
    epochs: int | None = None,
    progress: Any = None,
) -> History:
    """Trains with (lazy) Adam and early stopping on validation loss; restores the best weights.

    With `epochs` (and no validation data): exactly that many epochs, as a model whose
    stopping point was already chosen on validation is retrained on other data.
    """
    import keras

    model.compile(
        optimizer=lazy_adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    batch_size = config.batch_size or auto_batch_size(len(y_train))
    monitor = config.monitor
    if monitor == "auto":
        monitor = "val_accuracy" if any(t.dtype == "int64" for t in model.inputs) else "val_loss"
    callbacks = [] if epochs is not None else [keras.callbacks.EarlyStopping(
        monitor=monitor, patience=config.patience, restore_best_weights=True, verbose=0,
        mode="max" if monitor == "val_accuracy" else "min",
    )]
    if progress is not None:  # a Keras callback that reports the epochs (tlserve.trainer.progress)
        callbacks.append(progress)
    validation_data: Any = None
    if x_val is not None and y_val is not None and epochs is None:
        validation_data = (x_val, y_val)
    class_weight = class_weight_map(y_train, n_classes) if config.class_weights else None
    if any(array.dtype == np.int64 for array in x_train.values()):
        weights = np.array([class_weight[int(c)] for c in y_train], np.float32) if class_weight else None
        result = model.fit(
            _token_batches(x_train, y_train, batch_size, seed=len(y_train), sample_weight=weights, shuffle=True),
            validation_data=_token_batches(validation_data[0], validation_data[1], 1024, seed=0, sample_weight=None,
                                           shuffle=False)
            if validation_data else None,
            epochs=epochs or config.epochs, callbacks=callbacks, verbose=0,
            shuffle=False,  # the batches are shuffled (and length-sorted) by the pipeline itself
        )
    else:
        result = model.fit(
            keras_inputs(x_train), y_train,
            validation_data=(keras_inputs(validation_data[0]), validation_data[1]) if validation_data else None,
            epochs=epochs or config.epochs,
            batch_size=batch_size,
            shuffle=True,
            callbacks=callbacks,
            class_weight=class_weight,
            verbose=0,
        )
    h = result.history
    if not validation_data:
        return History(h["loss"], [], h["accuracy"], [], len(h["loss"]) - 1)
    best = int(np.argmax(h["val_accuracy"]) if monitor == "val_accuracy" else np.argmin(h["val_loss"]))
    return History(h["loss"], h["val_loss"], h["accuracy"], h["val_accuracy"], best)
