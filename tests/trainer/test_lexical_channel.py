"""The lexical channel's choice of lexicon: n-grams of a single training text join it only when validation says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlserve.core.encoders import compiled_available
from tlserve.core.features import FeatureConfig, Featurizer
from tlserve.core.labelled import LabelledData
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.vector_store import VectorStore
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits
from tlserve.trainer.fitting import LexicalModel, fit_lexical

# 210 words, each in about 30 of 1,000 texts (as are their character n-grams); almost every word bigram in one.
WORDS = [f"{a}{b}{c}o" for a in "bcdfgk" for b in "lmnprst" for c in "aeiuy"]


def _texts(rng: np.random.Generator, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=6, replace=False)) for _ in range(n)]


def _data(texts: list[str], labels: list[str]) -> LabelledData:
    return LabelledData(texts, labels, list(range(1, len(texts) + 1)), Path("lexicon.csv"))


def _fit(labels_from_word_order: bool) -> LexicalModel:
    """The lexical channel's choice on 1,000 training texts whose labels only their word order tells (and a
    validation split of the same texts), or that one word tells (and a validation split of new texts)."""
    rng = np.random.default_rng(7)

    def marked(texts: list[str]) -> LabelledData:  # the label: which of three marker words the text holds
        label = [str(int(rng.integers(3))) for _ in texts]
        return _data([f"{text} {WORDS[int(y)]}" for text, y in zip(texts, label, strict=True)], label)

    if labels_from_word_order:
        texts = _texts(rng, 1000)
        train = validation = _data(texts, [str(int(rng.integers(3))) for _ in texts])
    else:
        train, validation = marked(_texts(rng, 1000)), marked(_texts(rng, 300))
    splits = Splits(train, validation, validation)
    config = TrainConfig(repository=Path("unused"), model="m", data=Path("lexicon.csv"), vectors=Path("unused"))
    preprocessor = Preprocessor(PreprocessingConfig.from_dict({"case": "lower", "tokenizer": "latin"}))
    truth = np.array([int(label) for label in validation.labels])
    return fit_lexical(config, splits, preprocessor, ["0", "1", "2"], truth)


def _choice(labels_from_word_order: bool) -> dict[str, object]:
    return _fit(labels_from_word_order).chosen


def test_bigrams_of_one_text_join_the_lexicon_when_validation_gains() -> None:
    chosen = _choice(labels_from_word_order=True)
    assert chosen["min_texts"] == 1


def test_the_smaller_lexicon_stays_when_validation_does_not_gain() -> None:
    small, large = _choice(labels_from_word_order=False), _choice(labels_from_word_order=True)
    assert small["min_texts"] == 2
    assert int(small["lexicon"]) < int(large["lexicon"])  # type: ignore[call-overload]


@pytest.mark.skipif(not compiled_available(), reason="this install has no compiled encoder")
def test_the_compiled_encoder_computes_the_same_lexical_channel(tiny_store: Path) -> None:
    """With a featurizer, the channel's TF-IDF features come from the compiled encoder: the same fit, to the bit."""
    rng = np.random.default_rng(3)
    texts = [f"{text} {'cat' if i % 2 else 'tree'}ish" for i, text in enumerate(_texts(rng, 400))]
    train = _data(texts[:300], [str(i % 2) for i in range(300)])
    validation = _data(texts[300:], [str(i % 2) for i in range(300, 400)])
    config = TrainConfig(repository=Path("unused"), model="m", data=Path("lexicon.csv"), vectors=tiny_store)
    store = VectorStore(tiny_store)
    preprocessor = Preprocessor(PreprocessingConfig.from_dict({"case": store.manifest.case, "tokenizer": "latin"}))
    words = Featurizer(FeatureConfig(mode="frozen"), preprocessor, store.index, np.asarray(store.matrix))
    truth = np.array([int(label) for label in validation.labels])
    splits = Splits(train, validation, validation)
    np.random.seed(0)  # SAGA shuffles with NumPy's global generator (training seeds it once per model)
    python = fit_lexical(config, splits, preprocessor, ["0", "1"], truth)
    np.random.seed(0)
    compiled = fit_lexical(config, splits, preprocessor, ["0", "1"], truth, words=words)
    assert python.lexicon.units == "words+chars"
    assert python.chosen == compiled.chosen
    np.testing.assert_array_equal(python.coefficients, compiled.coefficients)
    np.testing.assert_array_equal(python.validation, compiled.validation)


def test_a_c_path_that_stops_early_leaves_the_random_generator_as_a_whole_path_would() -> None:
    """The C path stops once validation loss rises; what trains next must not notice (SAGA draws one seed per
    fit from NumPy's global generator, and the fits skipped draw theirs)."""
    rng = np.random.default_rng(5)  # labels that nothing predicts: weaker regularisation only overfits
    train = _data(_texts(rng, 300), [str(int(rng.integers(3))) for _ in range(300)])
    validation = _data(_texts(rng, 100), [str(int(rng.integers(3))) for _ in range(100)])
    config = TrainConfig(repository=Path("unused"), model="m", data=Path("lexicon.csv"), vectors=Path("unused"))
    preprocessor = Preprocessor(PreprocessingConfig.from_dict({"case": "lower", "tokenizer": "latin"}))
    truth = np.array([int(label) for label in validation.labels])
    np.random.seed(0)
    chosen = fit_lexical(config, Splits(train, validation, validation), preprocessor, ["0", "1", "2"], truth).chosen
    after = np.random.randint(1 << 30)
    assert chosen["C"] < 100  # the path stopped before its last Cs
    np.random.seed(0)
    for _ in range(2 * 4):  # two lexicons, four Cs each
        np.random.randint(1, np.iinfo(np.int32).max)
    assert np.random.randint(1 << 30) == after
