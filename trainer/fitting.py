"""Fitting the models of `tlserve train`: the semantic members of each mode, the lexical channel, one graph.

`fit_model` encodes the splits with the shared `tlserve.core.features` (so serving sees the same
numbers), builds the model of `config.mode` (one per pooling candidate) and trains it with
early stopping on the validation split; it fits the lexical channel (logistic regression
on TF-IDF n-grams); it mixes the members' probabilities with weights chosen on validation
(in log space) and calibrates the mix with a temperature fitted on validation; and it returns all of it
as one Keras graph, so serving stays one onnxruntime call.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tlserve.core.features import (
    FIRST_TRAINED_ID,
    LEXICON_IDS_INPUT,
    LEXICON_WEIGHTS_INPUT,
    EncodedBatch,
    FeatureConfig,
    Featurizer,
)
from tlserve.core.labelled import is_chinese
from tlserve.core.lexicon import Lexicon, Units
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.vector_store import VectorStore
from tlserve.trainer import calibration
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits
from tlserve.trainer.progress import Stage, current, keras_epochs
from tlserve.trainer.quantization import dequantize_columns, quantize_columns

_LOGGER = logging.getLogger(__name__)
# scikit-learn warns when classes outnumber half the texts ("could represent a regression problem"): here
# labels are always classes, and a task of many labels printed it once per fit.
warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%", category=UserWarning)

SIF_A = 1e-3
# Floats of the lexical channel's weights (n-grams x classes) in one graph: 20 MB (a 1,000-label model keeps
# 5,000 n-grams; 10 labels keep up to --lexicon-size).
LEXICON_WEIGHT_BUDGET = 5_000_000
# A word bigram found in fewer training texts is left out of the lexicon and gets no hashed row of its own
# in finetune: it is a phrase seen once, which the models can only memorise. On seeded splits other than the
# accuracy table's, the lexicon kept a third of its n-grams at a validation log-loss as good or better
# (WordNet, SpamAssassin, reviews), and a WordNet finetune head a third of its rows.
MIN_BIGRAM_TEXTS = 2
# The lexicon keeps the n-grams seen in a single training text only when that lowers the lexical channel's
# validation log-loss by this much: it doubles the lexicon (and its weights in every head). On seeded splits the
# accuracy table does not use, at 10 % of the labels: Debian synopses gained 0.029-0.038 nats (and 0.2-1.2
# points of the default's accuracy), reviews -0.002-0.018, WordNet -0.006-0.005 (no accuracy), SpamAssassin lost.
MIN_TEXTS_GAIN = 0.01
# Training texts the transfer check's two probes learn from (a sample past it).
TRANSFER_CHECK_EXAMPLES = 5_000


@dataclass
class FittedModel:
    """A trained Keras model with what it takes to encode texts for it."""

    keras_model: Any
    featurizer: Featurizer
    history: Any
    mixture: list[tuple[str, float]] | None = None
    """(member, weight) of each mixed member (a pooling or "lexical"); None for a single model."""
    temperature: float = 1.0
    """Temperature of the calibration step in the graph (1: none)."""
    temperature_exponent: float = 0.0
    """b of the adaptive temperature t = T * (max p)^b (0: one temperature for every text)."""
    lexical: dict[str, Any] | None = None
    """What the lexical channel chose (C, lexicon size), if the graph has one."""
    transfer: dict[str, Any] | None = None
    """Validation accuracy of a linear probe on the pretrained vectors, on random ones and of the lexical
    channel: what the source knowledge buys on this task (`transfer_check`)."""


def sif_weights(featurizer: Featurizer, texts: list[str], size: int) -> np.ndarray:
    """a / (a + p(w)) per store row, p(w) counted over the training texts' tokens."""
    _, rows, _ = featurizer.lookup(texts)
    rows = rows[rows >= 0]
    frequency = np.bincount(rows, minlength=size).astype(np.float64) / max(1, len(rows))
    return (SIF_A / (SIF_A + frequency)).astype(np.float32)


def model_preprocessor(config: TrainConfig, store: VectorStore) -> Preprocessor:
    """The tokens a model of `config` reads: the store's case, the configured tokenizer and token cap."""
    return Preprocessor(PreprocessingConfig.from_dict(
        {"case": store.manifest.case, "tokenizer": config.tokenizer, "max_tokens": config.max_tokens}))


def random_like(store: VectorStore, seed: int) -> np.ndarray:
    """Random vectors of the store's shape and per-dimension mean and spread (no transfer)."""
    matrix = np.asarray(store.matrix)
    rng = np.random.default_rng(seed + 7919)
    return (rng.standard_normal(matrix.shape) * matrix.std(0) + matrix.mean(0)).astype(np.float32)


def fit_model(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str],
              matrix: np.ndarray | None = None) -> FittedModel:
    """Fits the model of `config.mode` and, with `config.lexical`, the lexical channel; mixes the members
    with weights chosen on validation, then fits a temperature on validation (`config.calibrate`). Each
    stage is reported to `tlserve.trainer.progress.current()`."""
    from tlserve.trainer import models

    progress = current()
    candidates = config.pooling_candidates()
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(label, 0) for label in splits.validation.labels])
    members: list[FittedModel] = []
    validation: list[np.ndarray] = []
    for number, pooling in enumerate(candidates, start=1):
        name = f"{config.mode} {pooling}" + (f" ({number}/{len(candidates)})" if len(candidates) > 1 else "")
        with progress.stage(name) as stage:
            member = _fit_one(replace(config, pooling=pooling), splits, store, labels, matrix, stage=stage)
            members.append(member)
            validation.append(predict(member, splits.validation.texts)[0])
            stage.note(f"{member.history.best_epoch + 1} epochs kept of {len(member.history.loss)}, validation "
                       f"accuracy {float(np.mean(validation[-1].argmax(1) == truth)):.4f}")
    names = list(candidates)
    lexical = None
    if config.lexical:
        with progress.stage("lexical channel") as stage:
            lexical = fit_lexical(config, splits, members[0].featurizer.preprocessor, labels, truth,
                                  words=members[0].featurizer)
            stage.note(f"{len(lexical.lexicon):,} {lexical.lexicon.units[:-1]} n-grams, C={lexical.chosen['C']:g}, "
                       f"validation accuracy {float(np.mean(lexical.validation.argmax(1) == truth)):.4f}")
        validation.append(lexical.validation)
        names.append("lexical")
    transfer = None
    if config.transfer_check and matrix is None:
        with progress.stage("transfer check") as stage:
            transfer = transfer_check(config, splits, store, labels, truth, lexical.validation if lexical else None)
            stage.note(f"linear probe on the vectors {transfer['pretrained']:.4f}, on random vectors "
                       f"{transfer['random']:.4f}")
    held_out, held_out_truth = validation, truth
    if (min(config.calibration_folds, len(splits.train)) > 1 and len(truth) < config.calibration_min_examples
            and (config.calibrate or len(validation) > 1)):
        index_of = {label: i for i, label in enumerate(labels)}
        y_train = np.array([index_of[label] for label in splits.train.labels])
        with progress.stage("out-of-fold answers") as stage:
            folds = out_of_fold(config, splits, store, labels, candidates, members, lexical, matrix)
            stage.note(f"{config.calibration_folds} folds of the {len(splits.train):,} training texts, for the "
                       "mixture and calibration")
        held_out = [np.concatenate([f, v]) for f, v in zip(folds, validation, strict=True)]
        held_out_truth = np.concatenate([y_train, truth])
        _LOGGER.debug("mixture and temperature fitted on %d validation texts and %d out-of-fold training texts",
                     len(truth), len(y_train))
    weights = calibration.mixture_weights(held_out, held_out_truth)
    for name, probabilities, weight in zip(names, validation, weights, strict=True):
        _LOGGER.debug("%s: validation accuracy %.4f, weight %.2f", name,
                      float(np.mean(probabilities.argmax(1) == truth)), weight)
    mixed = calibration.mix(validation, weights)
    if transfer is not None and lexical is not None:
        # What the vectors add to the task's own words: the mix against the lexical channel alone.
        # Both temperature-scaled, as the weights were chosen: the lexical channel alone is one of the mixes tried.
        transfer.update(lexical_log_loss=calibration.tempered_log_loss(lexical.validation, truth),
                        mixed_log_loss=calibration.tempered_log_loss(mixed, truth), vectors_weight=1.0 - weights[-1])
    mixed_held_out = calibration.mix(held_out, weights)
    temperature, exponent = 1.0, 0.0
    if config.calibrate and config.calibration_method == "adaptive":
        temperature, exponent = calibration.fit_adaptive_temperature(mixed_held_out, held_out_truth, seed=config.seed)
    elif config.calibrate:
        temperature = calibration.fit_temperature(mixed_held_out, held_out_truth)
    # The graph's inputs are fixed by its mode: the semantic member with the most weight stays,
    # even at weight 0, so that a mode's graph always reads the inputs the server feeds it.
    semantic = len(members)
    keep = [i for i in range(semantic) if weights[i] > 0] or [int(np.argmax(weights[:semantic]))]
    lexical_kept = lexical is not None and weights[semantic] > 0
    if len(keep) == 1 and not lexical_kept and temperature == 1.0 and exponent == 0.0:
        return replace(members[keep[0]], transfer=transfer)
    kept_members = [members[i] for i in keep]
    graph_members = [m.keras_model for m in kept_members]
    graph_weights = [weights[i] for i in keep]
    mixture = [(names[i], weights[i]) for i in keep]
    widest = max(kept_members, key=lambda m: m.featurizer.feature_size if m.featurizer.matrix is not None else 0)
    featurizer = widest.featurizer
    if lexical_kept:
        assert lexical is not None
        graph_members.append(models.build_lexical(lexical.coefficients, lexical.intercept))
        graph_weights.append(weights[semantic])
        mixture.append(("lexical", weights[semantic]))
        featurizer = Featurizer(replace(featurizer.config, lexical=True, lexical_units=lexical.lexicon.units),
                                featurizer.preprocessor, featurizer.index, featurizer.matrix,
                                featurizer.sif_weights, lexical.lexicon, featurizer.trained)
    progress.line(f"{'mixture':<24} {' + '.join(f'{w:.2f} x {n}' for n, w in mixture)}, temperature "
                  f"{temperature:.3f} x (max p)^{exponent:.3f}")
    keras_model = models.build_mixture(graph_members, graph_weights, temperature, exponent)
    # Every finetune member trained the same rows (those of the training texts); the graph holds each one's.
    return FittedModel(keras_model, featurizer, kept_members[0].history, mixture,
                       temperature, exponent, lexical.chosen if lexical_kept and lexical else None, transfer)


def out_of_fold(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], candidates: list[str],
                members: list[FittedModel], lexical: LexicalModel | None, matrix: np.ndarray | None
                ) -> list[np.ndarray]:
    """Each member's probabilities for every training text, from a copy trained on the other folds.

    Copies train for the epochs their member's early stopping chose (and the lexical channel
    keeps its C), without looking at the validation split, so their answers are held out as
    the validation split's are: `config.calibration_folds` times as many texts to fit the
    mixture and the temperature on.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in splits.train.labels])
    folds = min(config.calibration_folds, len(y))
    counts = np.bincount(y)
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=config.seed) if counts[counts > 0].min() >= folds
                else KFold(folds, shuffle=True, random_state=config.seed))
    out = [np.zeros((len(y), len(labels))) for _ in range(len(members) + (lexical is not None))]
    for fold_train, fold_held_out in splitter.split(np.zeros(len(y)), y):
        fold = Splits(splits.train.subset(fold_train), splits.train.subset(fold_held_out), splits.test)
        for i, (pooling, member) in enumerate(zip(candidates, members, strict=True)):
            copy = _fit_one(replace(config, pooling=pooling), fold, store, labels, matrix,
                            epochs=member.history.best_epoch + 1)
            out[i][fold_held_out] = predict(copy, fold.validation.texts)[0]
        if lexical is not None:
            # The same regularisation per training text as the lexical channel itself: scikit-learn's C weighs
            # the sum of the texts' losses, so a fold's copy at the same C would be regularised more, answer less
            # confidently than the channel will, and the temperature fitted on its answers would sharpen the
            # channel's into over-confidence.
            c = lexical.chosen["C"] * len(y) / len(fold_train)
            out[-1][fold_held_out] = fit_lexical(config, fold, members[0].featurizer.preprocessor, labels,
                                                 y[fold_held_out], (c,), (lexical.chosen["min_texts"],),
                                                 members[0].featurizer).validation
    return out


def transfer_check(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], truth: np.ndarray,
                   lexical_validation: np.ndarray | None) -> dict[str, Any]:
    """Validation accuracy of the same linear probe on texts pooled from the pretrained vectors and from random
    vectors of the store's shape, and of the lexical channel: whether the source knowledge helps this task.

    A probe (logistic regression on the frozen mean_max pooling) rather than a network: the question is what
    the vectors carry, which a linear read-out answers in about a second where two Keras heads took a tenth
    of the training time."""
    from sklearn.linear_model import LogisticRegression

    if len(splits.train) > TRANSFER_CHECK_EXAMPLES:
        # A comparison of two probes on validation: a sample of the training split tells as much.
        sample = np.sort(np.random.default_rng(config.seed).choice(len(splits.train), TRANSFER_CHECK_EXAMPLES,
                                                                   replace=False))
        splits = replace(splits, train=splits.train.subset(sample))
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.array([index[label] for label in splits.train.labels])
    preprocessor = model_preprocessor(config, store)

    def probe_accuracy(table: np.ndarray) -> float:
        featurizer = Featurizer(FeatureConfig(mode="frozen", pooling="mean_max", sif=False), preprocessor,
                                store.index, table)
        x_train = featurizer.encode(splits.train.texts).inputs["features"]
        x_validation = featurizer.encode(splits.validation.texts).inputs["features"]
        # Standardised: max-pooled features sit far from zero, and uncentred they took L-BFGS 1,000 iterations.
        centre, scale = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
        probe = LogisticRegression(max_iter=1000).fit((x_train - centre) / scale, y_train)
        return float(np.mean(probe.predict((x_validation - centre) / scale) == truth))

    lexical = float(np.mean(lexical_validation.argmax(1) == truth)) if lexical_validation is not None else None
    return {"validation_examples": len(truth), "train_examples": len(splits.train),
            "pretrained": probe_accuracy(np.asarray(store.matrix)),
            "random": probe_accuracy(random_like(store, config.seed)), "lexical": lexical}


def pooling_name(fitted: FittedModel) -> str:
    if fitted.mixture is not None:
        return " + ".join(f"{weight:.2f} x {member}" for member, weight in fitted.mixture)
    return fitted.featurizer.config.pooling


@dataclass
class LexicalModel:
    """The lexical channel fitted on the training split: lexicon, linear weights, validation probabilities."""

    lexicon: Lexicon
    coefficients: np.ndarray
    """float32 [n-grams, classes]."""
    intercept: np.ndarray
    validation: np.ndarray
    chosen: dict[str, Any]


def _tfidf_matrix(lexicon: Lexicon, units: Sequence[Sequence[str]], texts: Sequence[str],
                  words: Featurizer | None) -> Any:
    """The lexicon's TF-IDF features of the texts (split into `units`) as a sparse matrix: what the graph
    computes. With `words` (a featurizer with the same preprocessing) the compiled encoder computes them, the
    same numbers at a tenth of the cost of word and character n-grams in Python; characters are cheap either way."""
    from scipy.sparse import csr_matrix

    encoder = None if words is None or lexicon.units == "chars" else Featurizer(
        FeatureConfig(mode="frozen", lexical=True, lexical_units=lexicon.units), words.preprocessor, words.index,
        words.matrix, lexicon=lexicon)
    if encoder is not None and encoder.native is not None:
        inputs = encoder.encode(texts).inputs
        ids, weights = inputs[LEXICON_IDS_INPUT], inputs[LEXICON_WEIGHTS_INPUT]
    else:
        ids, weights = lexicon.encode(units)
    rows, columns = np.nonzero(ids)
    return csr_matrix((weights[rows, columns], (rows, ids[rows, columns] - 1)), shape=(len(ids), len(lexicon)))


# (validation log-loss, C, min_texts, lexicon, coefficients, intercept, validation features)
_LexicalFit = tuple[float, float, int, Lexicon, np.ndarray, np.ndarray, Any]


def fit_lexical(config: TrainConfig, splits: Splits, preprocessor: Preprocessor, labels: list[str],
                truth: np.ndarray, c_values: Sequence[float] = (1.0, 10.0, 100.0, 1000.0),
                min_texts: Sequence[int] = (MIN_BIGRAM_TEXTS, 1), words: Featurizer | None = None) -> LexicalModel:
    """Logistic regression on TF-IDF n-grams of the model's own tokens; C, and the texts a bigram or character
    n-gram must be found in to join the lexicon (of `min_texts`), chosen on validation log-loss. `words`: a
    featurizer over the same preprocessing, to compute the features with the compiled encoder."""
    from sklearn.linear_model import LogisticRegression

    units: Units = "chars" if is_chinese(splits.train.texts) else "words"
    if units == "words" and config.lexicon_chars and config.tokenizer == "latin":
        units = "words+chars"
    train_units = preprocessor.batch_units(splits.train.texts, units)
    validation_units = preprocessor.batch_units(splits.validation.texts, units)
    # Weights take n-grams x classes floats in the graph: bounded, so 1,000 labels stay small.
    size = max(1000, min(config.lexicon_size, LEXICON_WEIGHT_BUDGET // len(labels)))
    # A character bigram is most often a Chinese word: all are kept (THUCNews lost accuracy without the rare ones).
    # Elsewhere the n-grams seen once are tried without and with: they are most of a short-text task's phrases
    # (Debian synopses of 6 words) and noise in long texts (SpamAssassin), and validation tells which.
    thresholds = (1,) if units == "chars" else tuple(dict.fromkeys(min_texts))
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.array([index[label] for label in splits.train.labels])
    best: _LexicalFit | None = None
    for threshold in thresholds:
        best_here: _LexicalFit | None = None
        lexicon = Lexicon.fit(train_units, size, units, min_bigram_texts=threshold)
        x_train = _tfidf_matrix(lexicon, train_units, splits.train.texts, words)
        x_validation = _tfidf_matrix(lexicon, validation_units, splits.validation.texts, words)
        # SAGA from the previous C's solution (weaker regularisation continues from stronger): the
        # three fits take a fraction of a second where L-BFGS from scratch took seconds, at the same
        # validation log-loss (WordNet, 10 % of the labels).
        model = LogisticRegression(C=1.0, solver="saga", tol=1e-3, max_iter=3000, warm_start=True)
        for k, c in enumerate(c_values):
            model.set_params(C=c)
            model.fit(x_train, y_train)
            probabilities = np.zeros((len(truth), len(labels)))
            probabilities[:, model.classes_] = model.predict_proba(x_validation)
            loss = calibration.log_loss(probabilities, truth)
            if best_here is not None and loss >= best_here[0]:
                # Past the best C: weaker regularisation overfits further, and its fits are the slowest (WordNet,
                # all labels: C=1000 took longer than C=1 and 10 together). SAGA draws one seed per fit from
                # NumPy's global generator: the fits skipped draw theirs, so that what trains next sees the
                # generator as the whole path left it, and a model does not depend on where its path stopped.
                for _ in c_values[k + 1 :]:
                    np.random.randint(1, np.iinfo(np.int32).max)
                break
            best_here = (loss, c, threshold, lexicon, model.coef_.copy(), model.intercept_.copy(), x_validation)
        assert best_here is not None
        # A larger lexicon must earn its memory per head: MIN_TEXTS_GAIN nats of validation log-loss.
        if best is None or best_here[0] < best[0] - MIN_TEXTS_GAIN:
            best = best_here
    assert best is not None
    _, c, threshold, lexicon, coef, bias, x_validation = best
    coefficients = np.zeros((len(lexicon), len(labels)), dtype=np.float32)
    intercept = np.zeros(len(labels), dtype=np.float32)
    if len(model.classes_) == 2:  # one weight vector: softmax over (0, z) is the sigmoid of z
        coefficients[:, model.classes_[1]] = coef[0]
        intercept[model.classes_[1]] = bias[0]
    else:
        coefficients[:, model.classes_] = coef.T
        intercept[model.classes_] = bias
    # The graph holds the weights in int8 (`trainer.quantization`): the validation answers are the quantized
    # classifier's, as every later choice (mixture, temperature) must see what a server will compute.
    q, scale = quantize_columns(coefficients)
    logits = x_validation @ dequantize_columns(q, scale) + intercept
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits.astype(np.float64))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    return LexicalModel(lexicon, coefficients, intercept, probabilities,
                        {"C": c, "min_texts": threshold, "lexicon": len(lexicon)})


def _fit_one(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str],
             matrix: np.ndarray | None = None, epochs: int | None = None, stage: Stage | None = None
             ) -> FittedModel:
    """Encodes the splits and fits one model; `matrix` replaces the store's vectors. With `epochs`, trains that
    many epochs without looking at the validation split; its epochs are shown on `stage`."""
    from tlserve.trainer import models

    models.seed_everything(config.seed)
    table = np.asarray(store.matrix) if matrix is None else matrix
    preprocessor = model_preprocessor(config, store)
    index = {label: i for i, label in enumerate(labels)}
    y_train = np.array([index[label] for label in splits.train.labels])
    y_val = np.array([index.get(label, 0) for label in splits.validation.labels])
    if config.mode == "frozen":
        features = FeatureConfig(mode="frozen", pooling=config.resolved_pooling, sif=config.sif)
        featurizer = Featurizer(features, preprocessor, store.index, table)
        if config.sif:
            featurizer.sif_weights = sif_weights(featurizer, splits.train.texts, len(store))
        x_train = featurizer.encode(splits.train.texts).inputs
        x_val = None if epochs else featurizer.encode(splits.validation.texts).inputs
        keras_model = models.build_frozen(x_train["features"], len(labels), config.head)
    else:
        features = FeatureConfig(mode="finetune", pooling=config.resolved_pooling,
                                 buckets=config.buckets, bigrams=config.bigrams, static=config.static)
        featurizer = Featurizer(features, preprocessor, store.index, table)
        trained = featurizer.rows_reached(splits.train.texts, MIN_BIGRAM_TEXTS)
        featurizer.trained = trained
        rng = np.random.default_rng(config.seed)
        dim = table.shape[1]
        # Zero rows first (padding, shared-store words, untrained hashed rows), then the training words'
        # vectors, then the hashed rows, which start small, as fastText's do, so they add little noise
        # until training gives them meaning.
        embedding = np.concatenate([np.zeros((FIRST_TRAINED_ID, dim), np.float32),
                                    np.asarray(table[trained.store_rows], dtype=np.float32),
                                    rng.uniform(-1.0 / dim, 1.0 / dim, size=(len(trained.buckets), dim))
                                    .astype(np.float32)])
        x_train = featurizer.encode(splits.train.texts).inputs
        x_val = None if epochs else featurizer.encode(splits.validation.texts).inputs
        keras_model = models.build_finetune(embedding, len(labels), config.resolved_pooling, config.head,
                                            x_train.get("features"), name=f"finetune_{config.resolved_pooling}")
    history = models.fit(keras_model, x_train, y_train, x_val, y_val, len(labels), config.head, epochs=epochs,
                         progress=keras_epochs(stage, epochs or config.head.epochs) if stage is not None else None)
    if config.mode == "finetune":
        # From here on the model is the one a server runs: its trained rows in int8.
        keras_model = models.quantized_finetune(keras_model, len(labels), config.resolved_pooling, config.head,
                                                x_train.get("features"))
    return FittedModel(keras_model, featurizer, history)


def predict(fitted: FittedModel, texts: list[str], batch_size: int = 1024) -> tuple[np.ndarray, EncodedBatch]:
    """The model's probabilities for `texts`, in batches of `batch_size`.

    The model is called eagerly: Keras's `predict` traces a graph for every new model, and training
    predicts with a dozen models once each (members, out-of-fold copies, transfer-check heads), where
    the tracing took longer than the answers. Same kernels on the same batches: the same numbers."""
    encoded = fitted.featurizer.encode(texts)
    from tlserve.trainer.models import keras_inputs

    parts = [np.asarray(fitted.keras_model(keras_inputs({name: array[start : start + batch_size]
                                                          for name, array in encoded.inputs.items()}),
                                           training=False))
             for start in range(0, len(texts), batch_size)]
    probabilities = np.concatenate(parts) if parts else np.zeros((0, fitted.keras_model.outputs[0].shape[-1]),
                                                                 np.float32)
    return probabilities, encoded


