"""`tlserve train`: labelled texts + a vector store -> a verified, versioned ONNX model bundle.

Flow: load and split the data (test split first, touched once at the end) -> features
(shared `tlserve.features`, so serving sees the same numbers) -> fit the Keras model with
early stopping on validation -> evaluate on test -> export to ONNX and check it against
Keras on the whole test split -> report -> publish the bundle atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tlserve import __version__, bundle
from tlserve.features import EncodedBatch, FeatureConfig, Featurizer
from tlserve.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import LabelledData, Splits, load_labelled, make_splits
from tlserve.vector_store import VectorStore, VocabularyIndex, copy_store, write_store

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


def data_fingerprint(*datasets: LabelledData) -> str:
    digest = hashlib.sha256()
    for data in datasets:
        for text, label in zip(data.texts, data.labels, strict=True):
            digest.update(label.encode())
            digest.update(b"\x1f")
            digest.update(text.encode())
            digest.update(b"\x1e")
    return digest.hexdigest()


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


def _pooling_name(config: TrainConfig, fitted: FittedModel) -> str:
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


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "tlserve": __version__}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy", "gensim"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def load_splits(config: TrainConfig) -> Splits:
    def load(path: Path) -> LabelledData:
        return load_labelled(path, config.data_format, config.text_column, config.label_column,
                             config.empty)

    data = load(config.data)
    return make_splits(
        data, config.test_fraction, config.validation_fraction, config.train_fraction, config.seed,
        load(config.validation_data) if config.validation_data else None,
        load(config.test_data) if config.test_data else None,
    )


@dataclass
class TrainResult:
    """The published version folder and the fitted model it was exported from."""

    path: Path
    fitted: FittedModel
    evaluation: Any


def train(config: TrainConfig) -> TrainResult:
    """Runs the whole flow and returns the published version."""
    from tlserve.trainer import export, report

    bundle.check_model_name(config.model)
    store = VectorStore(config.vectors)
    splits = load_splits(config)
    labels = sorted(set(splits.train.labels))
    _LOGGER.info("data: %d train / %d validation / %d test, %d classes; %s", len(splits.train),
                 len(splits.validation), len(splits.test), len(labels), "; ".join(splits.notes) or "")
    matrix = random_like(store, config.seed) if config.random_vectors else None
    fitted = fit_model(config, splits, store, labels, matrix, verbose=2 if config.progress else 0)
    probabilities, encoded = predict(fitted, splits.test.texts)
    evaluation = report.evaluate(splits.test.labels, probabilities, labels, encoded)

    model_dir = config.repository / config.model
    staging = bundle.staging_folder(model_dir)
    try:
        onnx_path = staging / bundle.MODEL_FILE
        export.to_onnx(fitted.keras_model, encoded.inputs, onnx_path)
        parity = export.check_parity(fitted.keras_model, onnx_path, encoded.inputs)
        (staging / bundle.LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n")
        (staging / bundle.PREPROCESSING_FILE).write_text(fitted.featurizer.preprocessor.config.to_json() + "\n")
        if fitted.featurizer.sif_weights is not None:
            np.save(staging / bundle.SIF_FILE, fitted.featurizer.sif_weights, allow_pickle=False)
        if fitted.own_store is not None:
            words, adapted = fitted.own_store
            store_manifest = write_store(staging / bundle.OWN_STORE_DIR, words, adapted, case=store.manifest.case,
                                         source_name=store.manifest.source_name,
                                         source_sha256=store.manifest.source_sha256)
            store_info = {**asdict(store_manifest), "shared": False, "base_fingerprint": store.fingerprint}
            if config.static:
                copy_store(store, config.repository / bundle.STORES_DIR / store.fingerprint)
        else:
            copy_store(store, config.repository / bundle.STORES_DIR / store.fingerprint)
            store_info = {**asdict(store.manifest), "shared": True}
        comparison = None
        if config.compare:
            from tlserve.trainer import compare

            comparison = compare.run(config, splits, store, labels, evaluation, config.learning_curve)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = {
            "model": config.model,
            "mode": config.mode,
            "created_at": created,
            "labels": labels,
            "preprocessing": json.loads(fitted.featurizer.preprocessor.config.to_json()),
            "features": fitted.featurizer.config.to_dict(),
            "vector_store": store_info,
            "onnx": {"file": bundle.MODEL_FILE, "opset": export.OPSET,
                     "inputs": {name: str(array.dtype) for name, array in encoded.inputs.items()},
                     "output": "probabilities"},
            "parity": parity.to_dict(),
            "metrics": evaluation.headline(),
            "training_data": {
                "fingerprint": data_fingerprint(splits.train, splits.validation, splits.test),
                "source": str(config.data),
                "examples": {"train": len(splits.train), "validation": len(splits.validation),
                             "test": len(splits.test)},
                "class_counts": dict(Counter(splits.train.labels)),
                "skipped_empty": splits.train.skipped_empty,
                "seed": config.seed,
                "train_fraction": config.train_fraction,
            },
            "hyperparameters": {**asdict(config.head), "pooling": _pooling_name(config, fitted), "sif": config.sif,
                                "top_words": config.top_words, "buckets": config.buckets, "bigrams": config.bigrams,
                                "static": config.static,
                                "random_vectors": config.random_vectors},
            "library_versions": library_versions(),
        }
        report.write(staging, config, manifest, evaluation, fitted.history, comparison)
        target = bundle.publish_version(staging, model_dir, manifest)
    except BaseException:
        bundle.discard(staging)
        raise
    _LOGGER.info("published %s", target)
    return TrainResult(target, fitted, evaluation)
