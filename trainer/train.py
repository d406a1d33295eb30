"""`tlserve train`: labelled texts + a vector store -> a verified, versioned ONNX model bundle.

Flow: load and split the data (test split first, touched once at the end) -> features
(shared `tlserve.core.features`, so serving sees the same numbers) -> fit the Keras model with
early stopping on validation -> evaluate on test -> export to ONNX and check it against
Keras on the whole test split -> report -> publish the bundle atomically.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tlserve import __version__
from tlserve.core import bundle
from tlserve.core.bundle import BundleManifest, OnnxInfo, StoreRef, TrainingDataRecord
from tlserve.core.evaluation import evaluate, expected_calibration_error, reliability
from tlserve.core.features import OUTPUT
from tlserve.core.labelled import LabelledData, load_labelled
from tlserve.core.preprocessing import Preprocessor
from tlserve.core.process_memory import release_memory
from tlserve.core.vector_store import MANIFEST, VectorStore, copy_store, write_store
from tlserve.trainer.calibration import undo_temperature
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits, make_splits
from tlserve.trainer.fitting import FittedModel, fit_model, pooling_name, predict, random_like
from tlserve.trainer.progress import current

_LOGGER = logging.getLogger(__name__)


def data_fingerprint(*datasets: LabelledData) -> str:
    digest = hashlib.sha256()
    for data in datasets:
        for text, label in zip(data.texts, data.labels, strict=True):
            digest.update(label.encode())
            digest.update(b"\x1f")
            digest.update(text.encode())
            digest.update(b"\x1e")
    return digest.hexdigest()



def _import_export_libraries() -> None:
    """Imports what writing a version needs before its staging folder exists. A stop signal
    (Ctrl-C, SIGTERM) that lands inside a native module's initialisation aborts the process
    with no chance to clean up; landing anywhere later, it unwinds and the folder is removed."""
    import matplotlib.pyplot  # noqa: F401
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import tf2onnx  # noqa: F401


def count_truncated(preprocessor: Preprocessor, texts: list[str]) -> int:
    """How many texts lose tokens to the cap; logged, so a long document is never cut silently."""
    cap = preprocessor.config.max_tokens
    # A text of at most `cap` characters cannot have more than `cap` tokens.
    truncated = [len(text) for text in texts if len(text) > cap and preprocessor.is_truncated(text)]
    if truncated:
        _LOGGER.warning("%d of %d training texts have more than %d tokens and were cut to their first %d "
                        "(--max-tokens); the longest has %d characters", len(truncated), len(texts), cap, cap,
                        max(truncated))
    return len(truncated)


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
                             config.empty, config.unlabelled)

    data = load(config.data)
    return make_splits(
        data, config.test_fraction, config.validation_fraction, config.train_fraction, config.seed,
        load(config.validation_data) if config.validation_data else None,
        load(config.test_data) if config.test_data else None,
    )


def calibration_record(probabilities: np.ndarray, true_labels: list[str], labels: list[str], temperature: float,
                       exponent: float = 0.0) -> dict[str, Any]:
    """ECE and reliability bins on the test split, of the model as exported and without its temperature."""
    index = {label: i for i, label in enumerate(labels)}
    truth = np.array([index.get(label, -1) for label in true_labels])
    calibrated = temperature != 1.0 or exponent != 0.0
    before = undo_temperature(probabilities, temperature, exponent) if calibrated else probabilities
    return {"temperature": temperature, "temperature_exponent": exponent, "test_examples": len(truth),
            "ece_before": expected_calibration_error(before, truth),
            "ece_after": expected_calibration_error(probabilities, truth),
            "bins_before": reliability(before, truth), "bins": reliability(probabilities, truth)}


@dataclass
class TrainResult:
    """The published version folder and the fitted model it was exported from."""

    path: Path
    fitted: FittedModel
    evaluation: Any


def train(config: TrainConfig) -> TrainResult:
    """Runs the whole flow and returns the published version."""
    from tlserve.trainer import compare, export, report

    bundle.check_model_name(config.model)
    progress = current()
    with progress.stage("data") as stage:
        store = VectorStore(config.vectors)
        splits = load_splits(config)
        labels = sorted(set(splits.train.labels))
        stage.note(f"{len(splits.train):,} train / {len(splits.validation):,} validation / {len(splits.test):,} "
                   f"test texts, {len(labels)} labels" + "".join(f"; {note}" for note in splits.notes))
    matrix = random_like(store, config.seed) if config.random_vectors else None
    fitted = fit_model(config, splits, store, labels, matrix)
    del matrix
    # Each phase's peak (fitting, conversion, parity) starts from what the one before gave back.
    release_memory()
    with progress.stage("test split") as stage:
        _import_export_libraries()
        truncated = count_truncated(fitted.featurizer.preprocessor, splits.train.texts)
        probabilities, encoded = predict(fitted, splits.test.texts)
        evaluation = evaluate(splits.test.labels, probabilities, labels, encoded)
        headline = evaluation.headline()
        stage.note(f"accuracy {headline['test_accuracy']:.4f}, macro-F1 {headline['test_macro_f1']:.4f}")

    model_dir = config.repository / config.model
    for folder in bundle.remove_stale_staging(config.repository)[0]:
        _LOGGER.warning("removed %s: a staging folder left by a `tlserve train` that was killed", folder)
    for folder in bundle.incomplete_versions(model_dir):
        _LOGGER.warning("%s has no manifest: not a version; the new version is numbered after it", folder)
    with bundle.BundleWriter(config.repository, config.model) as writer:
        with progress.stage("ONNX export") as stage:
            export.to_onnx(fitted.keras_model, encoded.inputs, writer.graph_path)
            release_memory()
            parity = export.check_parity(fitted.keras_model, writer.graph_path, encoded.inputs)
            stage.note(f"checked against Keras on {parity.examples:,} test texts: max |dp| {parity.max_abs_diff:.1e}, "
                       f"same top label on {parity.argmax_agreement:.2%}")
        writer.labels(labels)
        writer.preprocessing(fitted.featurizer.preprocessor.config)
        if fitted.featurizer.sif_weights is not None:
            writer.sif_weights(fitted.featurizer.sif_weights)
        if fitted.featurizer.lexicon is not None and fitted.featurizer.config.lexical:
            writer.lexicon(fitted.featurizer.lexicon)
        if fitted.featurizer.trained is not None:
            writer.trained_rows(fitted.featurizer.trained)
        store_ref = _place_stores(config, store)
        comparison = None
        if config.compare:
            comparison = compare.run(config, splits, store, labels, evaluation, config.learning_curve)
        manifest = BundleManifest(
            model=config.model,
            version=0,  # set when published
            mode=config.mode,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            labels=labels,
            preprocessing=fitted.featurizer.preprocessor.config,
            features=fitted.featurizer.config,
            vector_store=store_ref,
            onnx=OnnxInfo(file=bundle.MODEL_FILE, opset=export.OPSET,
                          inputs={name: str(array.dtype) for name, array in encoded.inputs.items()}, output=OUTPUT),
            parity=parity,
            metrics=evaluation.headline(),
            training_data=TrainingDataRecord(
                fingerprint=data_fingerprint(splits.train, splits.validation, splits.test),
                source=str(config.data),
                examples={"train": len(splits.train), "validation": len(splits.validation),
                          "test": len(splits.test)},
                class_counts=dict(Counter(splits.train.labels)),
                skipped_empty=splits.train.skipped_empty,
                seed=config.seed,
                train_fraction=config.train_fraction,
                truncated_texts=truncated,
            ),
            hyperparameters={**asdict(config.head), "pooling": pooling_name(fitted), "sif": config.sif,
                             "buckets": config.buckets, "bigrams": config.bigrams,
                             "static": config.static, "random_vectors": config.random_vectors,
                             "lexical": fitted.lexical, "temperature": fitted.temperature,
                             "temperature_exponent": fitted.temperature_exponent},
            library_versions=library_versions(),
        )
        with progress.stage("report") as stage:
            report.write(writer, manifest, evaluation, fitted.history, comparison, fitted.transfer,
                         calibration_record(probabilities, splits.test.labels, labels, fitted.temperature,
                                            fitted.temperature_exponent), member_name(config, fitted))
            stage.note("report.md, report.json and figures")
        target = writer.publish(manifest)
    _LOGGER.debug("published %s", target)
    return TrainResult(target, fitted, evaluation)


def member_name(config: TrainConfig, fitted: FittedModel) -> str:
    """The network whose training curves the report shows: the model's own, or a mixture's first member."""
    if fitted.mixture:
        first = fitted.mixture[0][0]
        return f"the {config.mode} {first} member (of {', '.join(name for name, _ in fitted.mixture)})"
    return f"the {config.mode} {fitted.featurizer.config.pooling} network"


def _place_stores(config: TrainConfig, store: VectorStore) -> StoreRef:
    """Links the shared store into the repository's ``_stores/``; returns the manifest's record of it."""
    if config.random_vectors:
        store = _random_store(config, store)
    copy_store(store, config.repository / bundle.STORES_DIR / store.fingerprint)
    return StoreRef.of(store.manifest)


def _random_store(config: TrainConfig, store: VectorStore) -> VectorStore:
    """The random vectors a ``--random-vectors`` model trained on, as a store of its own among the repository's
    shared stores: a server must read the table training read, not the pretrained one. One seed gives one
    table (`random_like`), so models of one seed share it."""
    stores = config.repository / bundle.STORES_DIR
    stores.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".random-", dir=stores))
    try:
        manifest = write_store(scratch / "store", store.vocabulary, random_like(store, config.seed),
                               case=store.manifest.case,
                               source_name=f"random vectors shaped like {store.manifest.source_name}, seed "
                                           f"{config.seed}",
                               source_sha256=store.fingerprint)
        target = stores / manifest.fingerprint
        if not (target / MANIFEST).exists():
            os.replace(scratch / "store", target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return VectorStore(target)
