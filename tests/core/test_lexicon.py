"""The lexical channel's features: what scikit-learn's TfidfVectorizer computes, from ids and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlserve.core.bundle import LEXICON_FILE, LEXICON_IDF_FILE, Bundle
from tlserve.core.errors import BundleError
from tlserve.core.lexicon import Lexicon, char_ngrams, ngrams
from tlserve.core.vector_store import VectorStore

TEXTS = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog"], [], ["the", "the", "the"], ["cat", "dog", "cat"]]


def _dense(lexicon: Lexicon, token_lists: list[list[str]]) -> np.ndarray:
    ids, weights = lexicon.encode(token_lists)
    out = np.zeros((len(token_lists), len(lexicon) + 1), dtype=np.float64)
    for row in range(len(token_lists)):
        np.add.at(out[row], ids[row], weights[row])
    return out[:, 1:]


def test_weights_equal_scikit_learns_sublinear_tfidf() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    lexicon = Lexicon.fit(TEXTS, max_size=1000)
    vectorizer = TfidfVectorizer(analyzer=ngrams, sublinear_tf=True).fit(TEXTS)
    expected = vectorizer.transform(TEXTS).toarray()
    columns = [vectorizer.vocabulary_[gram] for gram in lexicon.grams]
    assert sorted(columns) == list(range(len(vectorizer.vocabulary_)))
    assert np.allclose(_dense(lexicon, TEXTS), expected[:, columns], atol=1e-6)


def test_words_and_chars_weigh_each_block_as_scikit_learns_union_of_two_vectorizers() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = [*TEXTS, ["walking", "walked"], ["walks", "dog"]]
    lexicon = Lexicon.fit(texts, max_size=10_000, units="words+chars", char_share=100.0)
    blocks = [TfidfVectorizer(analyzer=analyzer, sublinear_tf=True).fit(texts) for analyzer in (ngrams, char_ngrams)]
    expected = np.hstack([block.transform(texts).toarray() for block in blocks])
    names = [*blocks[0].vocabulary_, *(gram for gram in blocks[1].vocabulary_)]
    assert sorted(lexicon.grams or []) == sorted(names)
    offsets = (0, len(blocks[0].vocabulary_))
    columns = [offsets[gram.startswith("#")] + blocks[gram.startswith("#")].vocabulary_[gram]
               for gram in lexicon.grams or []]
    assert np.allclose(_dense(lexicon, texts), expected[:, columns], atol=1e-6)
    # "walker" was never seen, but its character n-grams were: it is not an empty text to this lexicon.
    ids, weights = lexicon.encode([["walker"]])
    assert (ids > 0).sum() >= 6 and float(np.square(weights).sum()) == pytest.approx(1.0, abs=1e-6)


def test_character_ngrams_are_capped_by_the_word_ngrams_kept() -> None:
    lexicon = Lexicon.fit(TEXTS, max_size=1000, units="words+chars", char_share=0.5)
    grams = lexicon.grams or []
    words = [gram for gram in grams if not gram.startswith("#")]
    assert words == Lexicon.fit(TEXTS, max_size=1000).grams
    assert len(grams) - len(words) == len(words) // 2
    assert Lexicon.fit(TEXTS, max_size=len(words), units="words+chars").grams == words  # words first


def test_unknown_ngrams_are_dropped_and_padding_is_zero() -> None:
    lexicon = Lexicon.fit(TEXTS, max_size=1000)
    ids, weights = lexicon.encode([["zebra"], ["cat", "zebra"], []])
    assert ids.shape == weights.shape == (3, 1)
    assert ids[0, 0] == 0 and weights[0, 0] == 0.0
    assert lexicon.grams[ids[1, 0] - 1] == "cat" and weights[1, 0] == pytest.approx(1.0)


def _bundle_with(lexicon: Lexicon, store: Path, repository: Path) -> Bundle:
    """A published version whose lexical channel is `lexicon` (written by the bundle writer)."""
    from tiny_models import make_model

    return Bundle.open(make_model(repository, "lex", VectorStore(store), lexicon=lexicon))


def test_the_most_frequent_ngrams_are_kept(tiny_store: Path, tmp_path: Path) -> None:
    lexicon = Lexicon.fit(TEXTS, max_size=2)
    assert lexicon.grams == ["cat", "dog"]  # "cat", "dog" and "the" are in 2 texts each; ties alphabetical
    bundle = _bundle_with(lexicon, tiny_store, tmp_path)
    loaded = bundle.lexicon()
    assert loaded.grams is None and np.array_equal(loaded.idf, lexicon.idf)  # lookups only: no strings held
    for left, right in zip(loaded.encode(TEXTS), lexicon.encode(TEXTS), strict=True):
        assert np.array_equal(left, right)
    assert bundle.lexicon(keep_grams=True).grams == lexicon.grams
    np.save(bundle.path / LEXICON_IDF_FILE, np.ones(5, dtype=np.float32))
    with pytest.raises(BundleError, match="2 n-grams but"):
        bundle.lexicon()


def test_a_words_and_chars_lexicon_reads_back_from_its_bundle(tiny_store: Path, tmp_path: Path) -> None:
    lexicon = Lexicon.fit(TEXTS, max_size=1000, units="words+chars")
    loaded = _bundle_with(lexicon, tiny_store, tmp_path).lexicon()
    assert loaded.char_ngrams and loaded.units == "words+chars"
    for left, right in zip(loaded.encode(TEXTS), lexicon.encode(TEXTS), strict=True):
        assert np.array_equal(left, right)


def test_chinese_texts_use_character_pairs_with_punctuation() -> None:
    from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor

    preprocessor = Preprocessor(PreprocessingConfig(tokenizer="jieba"))
    units = preprocessor.chars("股市 大涨\n(图)")
    assert units == list("股市 大涨 (图)")
    lexicon = Lexicon.fit([units, list("股市下跌")], max_size=100, units="chars")
    assert {"股市", "(图", "股", "图"} <= set(lexicon.grams) and " 大" in lexicon.grams
    ids, _ = lexicon.encode([list("股市")])
    assert sorted(lexicon.grams[i - 1] for i in ids[0]) == ["市", "股", "股市"]


def test_the_hash_index_answers_what_a_dictionary_would_and_refuses_a_repeated_ngram(tiny_store: Path,
                                                                                     tmp_path: Path) -> None:
    from collections import Counter

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(400)]
    texts = [[str(w) for w in rng.choice(words, size=rng.integers(0, 30))] for _ in range(300)]
    lexicon = Lexicon.fit(texts[:200], max_size=500)
    assert lexicon.grams is not None
    position = {gram: i + 1 for i, gram in enumerate(lexicon.grams)}
    ids, weights = lexicon.encode(texts)
    for row, tokens in enumerate(texts):
        expected = list(Counter(position[g] for g in ngrams(tokens) if g in position))
        assert ids[row, : len(expected)].tolist() == expected and not ids[row, len(expected):].any()
    assert (weights[ids == 0] == 0).all()
    bundle = _bundle_with(Lexicon.fit(TEXTS, max_size=3), tiny_store, tmp_path)
    (bundle.path / LEXICON_FILE).write_text("cat\ndog\ncat\n", encoding="utf-8")
    np.save(bundle.path / LEXICON_IDF_FILE, np.ones(3, dtype=np.float32))
    with pytest.raises(BundleError, match=r"lexicon.txt: n-gram 'cat' is listed twice \(lines 1 and 3\)"):
        bundle.lexicon()


def test_ngrams_of_different_string_widths_never_share_an_id() -> None:
    # CPython hashes a str's internal bytes: ' c' (two 1-byte characters) and '挠' (U+6320, one
    # 2-byte character) have one str hash, as do 'ab' and U+6261; Chinese text mixed with ASCII
    # has such pairs, so the index must not rest on the str hash.
    assert hash(" c") == hash("挠") and hash("ab") == hash("\u6261")
    lexicon = Lexicon([" c", "挠", "\u6261", "x"], np.ones(4, dtype=np.float32), units="chars")
    assert lexicon.ids_of([" c", "挠", "\u6261", "ab", "x", "\ud800"]).tolist() == [1, 2, 3, 0, 4, 0]


def test_a_bigram_of_fewer_texts_than_asked_is_left_out_and_unigrams_never_are() -> None:
    lexicon = Lexicon.fit(TEXTS, max_size=1000, min_bigram_texts=2)
    assert lexicon.grams is not None
    # "cat dog" and "the cat" are each in one text; every unigram stays, whatever its count.
    assert not {gram for gram in lexicon.grams if " " in gram}
    assert {"the", "cat", "sat", "on", "mat", "a", "dog"} == set(lexicon.grams)
    twice = Lexicon.fit([*TEXTS, ["the", "cat"]], max_size=1000, min_bigram_texts=2)
    assert twice.grams is not None and [gram for gram in twice.grams if " " in gram] == ["the cat"]
    chars = Lexicon.fit([list("猫是"), list("是猫")], max_size=1000, units="chars", min_bigram_texts=1)
    assert chars.grams is not None and {"猫是", "是猫"} <= set(chars.grams)


def test_a_text_encodes_alike_alone_and_in_any_batch() -> None:
    # A lone text (a serving call) skips the padding step of a batch: the two must agree to the bit,
    # or the server's answer would depend on which calls shared its batch.
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(60)]
    texts = [[str(w) for w in rng.choice(words, size=rng.integers(0, 12))] for _ in range(40)]
    lexicon = Lexicon.fit(texts, max_size=200)
    ids, weights = lexicon.encode(texts)
    for row, tokens in enumerate(texts):
        alone_ids, alone_weights = lexicon.encode([tokens])
        width = alone_ids.shape[1]
        assert np.array_equal(alone_ids[0], ids[row, :width]) and not ids[row, width:].any()
        assert np.array_equal(alone_weights[0], weights[row, :width])
        if alone_ids[0, 0]:
            assert np.sqrt(np.dot(alone_weights[0], alone_weights[0])) == pytest.approx(1.0, abs=1e-6)
