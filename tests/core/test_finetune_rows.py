"""A finetuned model holds only the rows its training changed, in int8; every other word reads the shared store."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tlserve.core.bundle import MANIFEST, TRAINED_ROWS_FILE, Bundle
from tlserve.core.errors import BundleError
from tlserve.core.features import BASE_ID, FIRST_TRAINED_ID, ZERO_ID, Featurizer
from tlserve.core.scorer import Scorer
from tlserve.trainer.quantization import dequantize_rows, quantize_columns, quantize_rows

from conftest import WORDNET_SAMPLE, Trained


def _sample_texts() -> list[str]:
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)]


def test_words_no_training_text_had_read_the_shared_vectors(trained: Trained) -> None:
    scorer = Scorer.open(trained.finetune.path)
    featurizer, matrix = scorer.featurizer, scorer.store.matrix
    assert featurizer.trained is not None
    untrained = [row for row in range(30_000, 30_100) if row not in set(featurizer.trained.store_rows.tolist())][:2]
    words = [scorer.store.vocabulary[row] for row in untrained]
    encoded = featurizer.encode([" ".join(words), words[0], words[1]])
    assert encoded.inputs["token_ids"][0, :2].tolist() == [BASE_ID, BASE_ID]
    assert np.array_equal(encoded.inputs["base_sum"][0], matrix[untrained[0]] + matrix[untrained[1]])
    if "base_max" in encoded.inputs:
        assert np.array_equal(encoded.inputs["base_max"][0], np.maximum(matrix[untrained[0]], matrix[untrained[1]]))
    assert encoded.oov_fractions.tolist() == [0.0, 0.0, 0.0]  # in the store: not out of vocabulary
    # Each word's own pretrained vector reaches the model: the two answers differ.
    answers = scorer.predict([words[0], words[1]]).probabilities
    assert not np.array_equal(answers[0], answers[1])
    # A word of the training texts has a trained row and adds nothing to the shared sums.
    trained_word = scorer.store.vocabulary[int(featurizer.trained.store_rows[0])]
    encoded = featurizer.encode([trained_word])
    assert encoded.inputs["token_ids"][0, 0] >= FIRST_TRAINED_ID
    assert not encoded.inputs["base_sum"].any()


def test_training_texts_reach_only_trained_rows(trained: Trained) -> None:
    served = Scorer.open(trained.finetune.path).featurizer
    texts = _sample_texts()
    featurizer = Featurizer(served.config, served.preprocessor, served.index, served.matrix,
                            lexicon=served.lexicon, trained=served.rows_reached(texts))
    ids = featurizer.encode(texts).inputs["token_ids"]
    # No training token reads the shared store or an untrained hashed row: the three zero rows of the
    # graph's table never get a gradient.
    assert not np.isin(ids, [BASE_ID, ZERO_ID]).any() and (ids >= FIRST_TRAINED_ID).sum() > 10_000
    assert not featurizer.encode(texts).inputs["base_sum"].any()
    # An unknown word whose hashed row no training text reached reads a zero row.
    reached = set(featurizer.trained.buckets.tolist()) if featurizer.trained else set()
    unseen = next(word for word in (f"zqx{i}" for i in range(1000))
                  if not reached & set(featurizer.rows_reached([word]).buckets.tolist()))
    assert featurizer.encode([unseen]).inputs["token_ids"].tolist() == [[ZERO_ID]]



def test_the_graph_holds_the_trained_rows_in_int8_and_no_copy_of_the_store(trained: Trained) -> None:
    bundle = Bundle.open(trained.finetune.path)
    scorer = Scorer.open(trained.finetune.path)
    assert scorer.featurizer.trained is not None
    rows = FIRST_TRAINED_ID + len(scorer.featurizer.trained)
    graph = onnx.load(str(bundle.model_file))
    dim = int(scorer.store.matrix.shape[1])
    tables = [numpy_helper.to_array(t) for t in graph.graph.initializer if len(t.dims) == 2 and t.dims[1] == dim
              and t.dims[0] > 1000]
    assert tables and all(table.dtype == np.int8 and table.shape[0] == rows for table in tables)
    assert all(not table[:FIRST_TRAINED_ID].any() for table in tables)  # padding, shared-store and zero rows
    largest = max(int(np.prod(t.dims)) * (1 if t.data_type == onnx.TensorProto.INT8 else 4)
                  for t in graph.graph.initializer)
    assert largest < scorer.store.matrix.nbytes / 10


def test_a_finetune_bundle_of_format_1_is_refused_and_a_frozen_one_still_opens(trained: Trained,
                                                                                tmp_path: Path) -> None:
    for source, name in ((trained.finetune.path, "finetune"), (trained.frozen.path, "frozen")):
        copy = tmp_path / name / "1"
        shutil.copytree(source, copy)
        manifest = json.loads((copy / MANIFEST).read_text())
        (copy / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))
        if name == "frozen":
            assert Bundle.open(copy, verify=False).manifest.format == 1
        else:
            with pytest.raises(BundleError, match=r"manifest.json: a finetune model of bundle format 1.*"
                                                  r"train the model again"):
                Bundle.open(copy, verify=False)


def test_trained_rows_files_are_checked(trained: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "1"
    shutil.copytree(trained.finetune.path, copy)
    rows = np.load(copy / TRAINED_ROWS_FILE)
    np.save(copy / TRAINED_ROWS_FILE, rows[::-1].copy())
    with pytest.raises(BundleError, match=r"trained_rows.npy: rows must be sorted, unique and in \[0, 40000\)"):
        Bundle.open(copy, verify=False).trained_rows(40_000)
    np.save(copy / TRAINED_ROWS_FILE, rows.astype(np.float32))
    with pytest.raises(BundleError, match=r"trained_rows.npy: float32 of shape \[\d+\]; expected int32"):
        Bundle.open(copy, verify=False).trained_rows(40_000)


def test_int8_rows_keep_zero_rows_and_stay_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(50, 16)).astype(np.float32) * rng.uniform(0.01, 10, size=(50, 1)).astype(np.float32)
    table[[0, 7]] = 0.0
    q, scale = quantize_rows(table)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and np.abs(q).max() == 127
    restored = dequantize_rows(q, scale)
    assert not restored[[0, 7]].any()
    assert np.all(np.abs(restored - table) <= scale[:, None] / 2 * (1 + 1e-6))
    columns, column_scale = quantize_columns(table)
    assert columns.shape == table.shape and column_scale.shape == (16,)
    assert np.all(np.abs(columns.astype(np.float32) * column_scale - table) <= column_scale / 2 * (1 + 1e-6))


def test_one_text_alone_gets_the_numbers_it_gets_in_a_batch(trained: Trained) -> None:
    featurizer = Scorer.open(trained.finetune.path).featurizer
    texts = [*_sample_texts()[:150], "", "zqx0 zqx1 zqx2", "the the the", "a " * 60, "猫 dog"]
    batch = featurizer.encode(texts)
    for row, text in enumerate(texts):
        alone = featurizer.encode([text])  # the few-token path for most of them
        for name, array in alone.inputs.items():
            expected = batch.inputs[name][row : row + 1]
            if name in ("token_ids", "lexicon_ids", "lexicon_weights"):  # padded to the batch's longest
                expected = expected[:, : array.shape[1]]
                assert not batch.inputs[name][row, array.shape[1]:].any()
            assert array.dtype == expected.dtype and np.array_equal(array, expected), (text, name)
        assert alone.token_counts[0] == batch.token_counts[row] and alone.oov_counts[0] == batch.oov_counts[row]
