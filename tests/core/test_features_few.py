"""The few-token paths (hash-table lookup, Python bookkeeping) give the batch path's rows and bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tlserve.core.features as features
from tlserve.core.features import FeatureConfig, Featurizer
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.vector_store import INDEX_HASH, VectorStore, VocabularyIndex, write_store

VOCABULARY = ["the", "a", "dog", "cat", "small", "ran", "über", "東京", "x" * 30, "of", "and", "to"]
WORDS = [*VOCABULARY, "unknown", "zebra", "x" * 31, "ÜBER", "dogs"]


def _featurizer(pooling: str, sif: bool) -> Featurizer:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(len(VOCABULARY), 16)).astype(np.float32)
    weights = rng.uniform(0.1, 1.0, size=len(VOCABULARY)).astype(np.float32) if sif else None
    config = FeatureConfig(mode="frozen", pooling=pooling, sif=sif)  # type: ignore[arg-type]
    index = VocabularyIndex.build(VOCABULARY)
    return Featurizer(config, Preprocessor(PreprocessingConfig()), index, matrix, weights)


def _batch_path(featurizer: Featurizer, texts: list[str]) -> features.EncodedBatch:
    """The vectorised path over `texts` plus one more text, so no one-text shortcut is taken."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "FEW_TOKENS", -1)
        encoded = featurizer.encode_python([*texts, "the small dog"])
    n = len(texts)
    return features.EncodedBatch({name: array[:n] for name, array in encoded.inputs.items()},
                                 encoded.token_counts[:n], encoded.oov_counts[:n])


def _assert_same_bits(got: features.EncodedBatch, expected: features.EncodedBatch) -> None:
    for name, array in expected.inputs.items():
        assert got.inputs[name].dtype == array.dtype and got.inputs[name].shape == array.shape
        assert got.inputs[name].tobytes() == array.tobytes()
    assert got.token_counts.tolist() == expected.token_counts.tolist()
    assert got.oov_counts.tolist() == expected.oov_counts.tolist()
    assert got.token_counts.dtype == expected.token_counts.dtype and got.oov_counts.dtype == expected.oov_counts.dtype


@pytest.mark.parametrize(("pooling", "sif"), [("mean", False), ("mean_max", False), ("mean", True), ("mean_max", True)])
@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join), min_size=1, max_size=3))
def test_few_tokens_encode_to_the_batch_paths_bits(pooling: str, sif: bool, texts: list[str]) -> None:
    featurizer = _featurizer(pooling, sif)
    assert sum(len(featurizer.preprocessor.tokens(t)) for t in texts) <= features.FEW_TOKENS  # the path under test
    expected = _batch_path(featurizer, texts)
    _assert_same_bits(featurizer.encode_python(texts), expected)
    for i, text in enumerate(texts):  # one text alone: the shortest path
        alone = featurizer.encode_python([text])
        _assert_same_bits(alone, features.EncodedBatch({k: v[i : i + 1] for k, v in expected.inputs.items()},
                                                       expected.token_counts[i : i + 1],
                                                       expected.oov_counts[i : i + 1]))


def test_hash_lookup_agrees_with_the_binary_search() -> None:
    index = VocabularyIndex.build(VOCABULARY)
    searched = VocabularyIndex(index.words, index.rows)
    # "x" * 31 is wider than every word: cast to the index's width it would match "x" * 30.
    assert index.lookup_few(WORDS) == searched.lookup(WORDS).tolist() == searched.lookup_few(WORDS)
    assert index.lookup(WORDS).tolist() == searched.lookup(WORDS).tolist()
    assert index.lookup_few(WORDS)[-3] == -1 and searched.lookup_few(WORDS)[-3] == -1
    assert index.lookup_few([]) == [] and index.lookup([]).tolist() == []


def test_hash_table_finds_every_word_and_misses_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    vocabulary = sorted({"".join(rng.choice(list("abcdéz東"), size=rng.integers(1, 9))) for _ in range(3000)})
    write_store(tmp_path / "s", vocabulary, rng.normal(size=(len(vocabulary), 4)), case="keep", source_name="t",
                source_sha256="0")
    store = VectorStore(tmp_path / "s")
    assert store.index.slots is not None  # written by write_store, mapped by VectorStore
    probes = [*vocabulary, *(word + "q" for word in vocabulary[:500]), "", "x" * 40]
    searched = VocabularyIndex(store.index.words, store.index.rows)  # the binary search, no table
    assert searched.slots is None
    assert store.index.lookup_few(probes) == searched.lookup(probes).tolist() == searched.lookup_few(probes)
    assert store.index.lookup(probes).tolist() == searched.lookup(probes).tolist()
    assert store.index.lookup_few(vocabulary) == list(range(len(vocabulary)))


def test_a_store_without_hash_table_and_a_damaged_one_still_answer(tmp_path: Path) -> None:
    vocabulary = ["apple", "banana", "cherry"]
    write_store(tmp_path / "s", vocabulary, np.eye(3), case="keep", source_name="t", source_sha256="0")
    (tmp_path / "s" / INDEX_HASH).unlink()  # as written before hash tables existed
    store = VectorStore(tmp_path / "s")
    assert store.index.slots is None
    assert store.index.lookup_few(["cherry", "kiwi"]) == [2, -1]
    full = np.zeros(16, dtype=np.int32)  # no free slot: a lookup must not probe forever
    damaged = VocabularyIndex(store.index.words, store.index.rows, full)
    assert damaged.lookup_few(["cherry", "kiwi"]) == [2, -1]


_PIECES = ["cat", "ΟΔΟΣ", "ΣΑΣ", "e\u0301", "\u0301", "ﬁne", "½", "ᾈ", "猫是一种", "x86_64", "don't", "ÄPFEL", "İ"]
_GAPS = [" ", "  ", "\n", "", "\u00a0", " \u0301", "\t", "ʼ"]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_GAPS)), max_size=120),
       cap=st.integers(1, 40))
def test_a_long_text_read_a_window_at_a_time_gives_the_whole_texts_tokens(pieces: list[tuple[str, str]],
                                                                         cap: int) -> None:
    """Long texts are normalised and tokenised from their start in windows ending at a space;
    the tokens are exactly those of the whole text (normalisation, final sigma, combining marks)."""
    text = "".join(piece + gap for piece, gap in pieces)
    preprocessor = Preprocessor(PreprocessingConfig(max_tokens=cap))
    preprocessor._window = 4  # windows far smaller than the text, so every case takes that path
    whole = preprocessor._tokenize(preprocessor.normalize(text))[:cap]
    assert preprocessor.tokens(text) == whole
