"""Real model versions in milliseconds, without TensorFlow: for tests whose subject is serving, not training.

A tiny model is a complete bundle in the format `tlserve train` writes: a real vector store
(random vectors for the words of the committed WordNet sample), a real ONNX graph (a linear
head over the pooled store vectors, optionally with a lexical channel), labels, preprocessing,
a manifest with the sha256 of every file. The server, the scorer and offline scoring load it as
they load a trained one; only its answers mean nothing.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from tlserve.core import bundle
from tlserve.core.bundle import BundleManifest, OnnxInfo, ParityRecord, StoreRef, TrainingDataRecord
from tlserve.core.features import (
    FROZEN_INPUT,
    LEXICON_IDS_INPUT,
    LEXICON_WEIGHTS_INPUT,
    OUTPUT,
    FeatureConfig,
)
from tlserve.core.lexicon import Lexicon
from tlserve.core.preprocessing import PreprocessingConfig
from tlserve.core.vector_store import VectorStore, copy_store, write_store

FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDNET_SAMPLE = FIXTURES / "wordnet-sample.csv"
DIMENSION = 16
LABELS = ["noun.animal", "noun.artifact", "noun.person", "noun.plant"]


def sample_texts() -> list[str]:
    with WORDNET_SAMPLE.open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def make_store(folder: Path, seed: int = 0) -> VectorStore:
    """A store of the sample's words (lower-cased), random vectors; `seed` makes distinct stores."""
    words = sorted({word for text in sample_texts() for word in re.findall(r"\w+", text.lower())})
    vectors = np.random.default_rng(seed).normal(size=(len(words), DIMENSION)).astype(np.float32)
    write_store(folder, words, vectors, case="lower", source_name=f"random-{seed}", source_sha256="0" * 64)
    return VectorStore(folder)


def _graph(labels: int, lexicon_rows: int | None, seed: int) -> bytes:
    """A linear head over `features` (+ a lexical channel over a table of `lexicon_rows` rows) and a softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inputs = [helper.make_tensor_value_info(FROZEN_INPUT, TensorProto.FLOAT, ["n", DIMENSION])]
    initializers = [numpy_helper.from_array(rng.normal(size=(DIMENSION, labels)).astype(np.float32), "W"),
                    numpy_helper.from_array(np.zeros(labels, np.float32), "b")]
    nodes = [helper.make_node("MatMul", [FROZEN_INPUT, "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    if lexicon_rows is not None:
        inputs += [helper.make_tensor_value_info(LEXICON_IDS_INPUT, TensorProto.INT64, ["n", "g"]),
                   helper.make_tensor_value_info(LEXICON_WEIGHTS_INPUT, TensorProto.FLOAT, ["n", "g"])]
        table = rng.normal(size=(lexicon_rows, labels)).astype(np.float32)
        table[0] = 0.0  # id 0 pads
        initializers += [numpy_helper.from_array(table, "L"), numpy_helper.from_array(np.array([2], np.int64), "ax")]
        nodes += [helper.make_node("Gather", ["L", LEXICON_IDS_INPUT], ["rows"]),
                  helper.make_node("Unsqueeze", [LEXICON_WEIGHTS_INPUT, "ax"], ["w3"]),
                  helper.make_node("Mul", ["rows", "w3"], ["weighted"]),
                  helper.make_node("ReduceSum", ["weighted", "one"], ["lexical"], keepdims=0),
                  helper.make_node("Add", ["logits", "lexical"], ["all_logits"])]
        initializers.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        last = "all_logits"
    else:
        last = "logits"
    nodes.append(helper.make_node("Softmax", [last], [OUTPUT], axis=1))
    output = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["n", labels])
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, [output], initializers),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def make_model(repository: Path, name: str, store: VectorStore, labels: list[str] | None = None,
               lexical: bool = True, lexicon_rows: int | None = None, seed: int = 0,
               lexicon: Lexicon | None = None) -> Path:
    """Publishes a version of `name` over `store` into `repository`; returns its folder.

    With `lexical`, the lexicon (`lexicon`, or the sample's 200 most common word n-grams) and the graph's
    table `lexicon_rows` rows (default: one per n-gram plus the padding row, as training makes it).
    """
    labels = labels or LABELS
    copy_store(store, repository / bundle.STORES_DIR / store.fingerprint)
    preprocessing = PreprocessingConfig()
    features = FeatureConfig(mode="frozen", lexical=lexical, lexical_units=lexicon.units if lexicon else "words")
    inputs = {name: "float32" for name in features.input_names}
    with bundle.BundleWriter(repository, name) as writer:
        if lexical:
            lexicon = lexicon or Lexicon.fit([text.lower().split() for text in sample_texts()], 200)
            writer.lexicon(lexicon)
            lexicon_rows = len(lexicon) + 1 if lexicon_rows is None else lexicon_rows
            inputs[LEXICON_IDS_INPUT] = "int64"
        writer.graph(_graph(len(labels), lexicon_rows if lexical else None, seed))
        writer.labels(list(labels))
        writer.preprocessing(preprocessing)
        return writer.publish(BundleManifest(
            model=name, version=0, mode="frozen", created_at="2026-01-01T00:00:00+00:00", labels=list(labels),
            preprocessing=preprocessing, features=features, vector_store=StoreRef.of(store.manifest),
            onnx=OnnxInfo(file=bundle.MODEL_FILE, opset=17, inputs=inputs, output=OUTPUT),
            parity=ParityRecord(examples=0, max_abs_diff=0.0, argmax_agreement=1.0, tolerance=1e-5, ok=True),
            metrics={"test_accuracy": 0.5}, training_data=TrainingDataRecord(
                fingerprint="0" * 64, source="tiny", examples={"train": 0, "validation": 0, "test": 0},
                class_counts={}, skipped_empty=0, seed=seed, train_fraction=1.0),
            hyperparameters={}, library_versions={}))
