"""The compiled encoder gives the Python encoder's inputs, bit for bit, and the same probabilities.

Over 10,000+ texts (English glosses, Chinese, short and long, empty, all-unknown, odd Unicode),
in batches and alone, for every kind of featurizer: frozen (mean, mean_max, SIF), finetune
(hashed unknown words and bigrams, a static channel, mean_max), word, word-and-character-n-gram and
character lexical channels, latin and jieba tokenisers.
"""

from __future__ import annotations

import csv
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tlserve.core import encoders
from tlserve.core.features import EncodedBatch, FeatureConfig, Featurizer
from tlserve.core.lexicon import Lexicon
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.vector_store import VocabularyIndex

from conftest import WORDNET_SAMPLE, mixed_texts

pytestmark = pytest.mark.skipif(not encoders.compiled_available(), reason="this install has no compiled encoder")

CHINESE = "猫是一种小型哺乳动物狗树木工具城市河流我们你他她的了在有人这中大为上个国不以会到说时要就出也得里后自"


def _texts() -> list[str]:
    with WORDNET_SAMPLE.open(encoding="utf-8") as handle:
        glosses = [row["text"] for row in csv.DictReader(handle)]
    rng = random.Random(11)
    texts = [*glosses, *mixed_texts(2000, seed=5), "", " ", "zzqx qqzv xxyzzy", "猫", "🐱"]
    while len(texts) < 7000:  # Chinese, mixed with Latin words now and then
        text = "".join(rng.choice(CHINESE) for _ in range(rng.randint(1, 40)))
        texts.append(text if rng.random() < 0.7 else f"{text} {rng.choice(glosses)}")
    while len(texts) < 9500:  # long: past 64 n-grams and past max_tokens
        texts.append(" ".join(rng.choice(glosses) for _ in range(rng.randint(4, 60))))
    while len(texts) < 10_200:  # unknown words only, or a few known among many unknown
        texts.append(" ".join("".join(rng.choice("qxzvjk") for _ in range(rng.randint(3, 9)))
                              for _ in range(rng.randint(1, 30))))
    return texts


TEXTS = _texts()


def _vocabulary() -> list[str]:
    """The glosses' words, Chinese characters and a few Chinese words, lower-cased; about a third of the
    glosses' words are left out, so texts have unknown words."""
    words = sorted({w for text in TEXTS[:1200] for w in Preprocessor(PreprocessingConfig()).tokens(text)})
    return [w for i, w in enumerate(words) if i % 3] + [*CHINESE, "哺乳动物", "工具", "城市", "我们"]


VOCABULARY = _vocabulary()


def _featurizer(config: FeatureConfig, tokenizer: str = "latin", dim: int = 24) -> Featurizer:
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(len(VOCABULARY), dim)).astype(np.float32)
    index = VocabularyIndex.build(VOCABULARY)
    preprocessor = Preprocessor(PreprocessingConfig(tokenizer=tokenizer))  # type: ignore[arg-type]
    sif = rng.uniform(0.05, 1.0, size=len(VOCABULARY)).astype(np.float32) if config.sif else None
    training = TEXTS[::7]
    lexicon = None
    if config.lexical:
        units = preprocessor.batch_units(training, config.lexical_units)
        lexicon = Lexicon.fit(units, 4000, config.lexical_units)
    trained = None
    if config.mode == "finetune":
        trained = Featurizer(config, preprocessor, index, matrix, lexicon=lexicon).rows_reached(training[::2])
    return Featurizer(config, preprocessor, index, matrix, sif, lexicon, trained)


CONFIGS = {
    "frozen-mean": (FeatureConfig(mode="frozen"), "latin"),
    "frozen-mean_max-lexical": (FeatureConfig(mode="frozen", pooling="mean_max", lexical=True), "latin"),
    "frozen-sif": (FeatureConfig(mode="frozen", sif=True), "latin"),
    "finetune-mean_max-lexical": (FeatureConfig(mode="finetune", pooling="mean_max", buckets=5000, bigrams=True,
                                                lexical=True), "latin"),
    "finetune-static-no-buckets": (FeatureConfig(mode="finetune", static=True), "latin"),
    "finetune-buckets-no-bigrams": (FeatureConfig(mode="finetune", buckets=997), "latin"),
    "frozen-words+chars": (FeatureConfig(mode="frozen", lexical=True, lexical_units="words+chars"), "latin"),
    "finetune-words+chars": (FeatureConfig(mode="finetune", buckets=5000, bigrams=True, lexical=True,
                                           lexical_units="words+chars"), "latin"),
    "frozen-chars-jieba": (FeatureConfig(mode="frozen", pooling="mean_max", lexical=True, lexical_units="chars"),
                           "jieba"),
    "finetune-chars-jieba": (FeatureConfig(mode="finetune", buckets=5000, bigrams=True, lexical=True,
                                           lexical_units="chars"), "jieba"),
}


FULL = ("frozen-mean_max-lexical", "finetune-mean_max-lexical")


def _assert_same_bits(got: EncodedBatch, expected: EncodedBatch, where: str) -> None:
    assert list(got.inputs) == list(expected.inputs), where
    for name, array in expected.inputs.items():
        other = got.inputs[name]
        assert (other.dtype, other.shape) == (array.dtype, array.shape), (where, name)
        if other.tobytes() != array.tobytes():
            row = int(np.flatnonzero((other != array).reshape(len(array), -1).any(axis=1))[0])
            raise AssertionError(f"{where}: {name} differs at text {row}: {other[row]} != {array[row]}")
    assert got.token_counts.tobytes() == expected.token_counts.tobytes(), where
    assert got.oov_counts.tobytes() == expected.oov_counts.tobytes(), where


@pytest.mark.parametrize("name", CONFIGS)
def test_the_compiled_encoder_gives_the_python_encoders_bits(name: str) -> None:
    config, tokenizer = CONFIGS[name]
    featurizer = _featurizer(config, tokenizer)
    assert featurizer.encoder == "native"
    # Two featurizers read all 10,000+ texts; the others (and jieba's, whose segmentation dominates the time)
    # every fourth, enough for every kind of text.
    texts = TEXTS if name in FULL else TEXTS[::4]
    for start in range(0, len(texts), 256):
        batch = texts[start : start + 256]
        _assert_same_bits(featurizer.encode(batch), featurizer.encode_python(batch), f"{name}, batch at {start}")
    for start in range(0, len(texts), 1000):  # batches of every size up to 40, the first text of each alone
        size = 1 + start // 1000 * 4
        batch = texts[start : start + size]
        _assert_same_bits(featurizer.encode(batch), featurizer.encode_python(batch), f"{name}, batch at {start}")
    for i in range(0, len(texts), 7):  # one text alone: the serving API's common call
        _assert_same_bits(featurizer.encode(texts[i : i + 1]), featurizer.encode_python(texts[i : i + 1]),
                          f"{name}, text {i} alone")


def test_a_damaged_hash_table_falls_back_to_the_search_in_the_compiled_encoder_too() -> None:
    featurizer = _featurizer(FeatureConfig(mode="frozen"))
    index = featurizer.index
    damaged = VocabularyIndex(index.words, index.rows, np.zeros(16, dtype=np.int32))  # no free slot
    broken = Featurizer(featurizer.config, featurizer.preprocessor, damaged, featurizer.matrix)
    assert broken.encoder == "native"
    texts = TEXTS[:300]
    _assert_same_bits(broken.encode(texts), featurizer.encode_python(texts), "damaged table")


def test_tlserve_encoder_chooses_and_python_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    config = FeatureConfig(mode="frozen")
    monkeypatch.setenv(encoders.ENCODER_VARIABLE, "python")
    assert _featurizer(config).encoder == "python"
    monkeypatch.setenv(encoders.ENCODER_VARIABLE, "native")
    assert _featurizer(config).encoder == "native"
    monkeypatch.setenv(encoders.ENCODER_VARIABLE, "fast")
    with pytest.raises(ValueError, match="TLSERVE_ENCODER='fast': expected auto, native or python"):
        _featurizer(config)
    monkeypatch.setattr(encoders, "_compiled", None)
    monkeypatch.setenv(encoders.ENCODER_VARIABLE, "native")
    with pytest.raises(ValueError, match="no compiled encoder"):
        _featurizer(config)
    monkeypatch.setenv(encoders.ENCODER_VARIABLE, "auto")
    assert _featurizer(config).encoder == "python"


def test_a_tiny_models_probabilities_are_the_same_with_either_encoder(tiny_store: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from tlserve.core.scorer import Scorer

    from conftest import tiny_repository

    repository = tiny_repository(tmp_path / "models", tiny_store, "tiny")
    answers = {}
    for encoder in ("python", "native"):
        monkeypatch.setenv(encoders.ENCODER_VARIABLE, encoder)
        scorer = Scorer.open(repository / "tiny" / "1")
        assert scorer.featurizer.encoder == encoder
        answers[encoder] = [scorer.predict(TEXTS[i : i + 1]).probabilities for i in range(0, 2000, 4)]
        answers[encoder].append(scorer.predict(TEXTS[:256]).probabilities)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(answers["python"], answers["native"], strict=True))


def test_arrays_set_after_construction_reach_the_compiled_encoder() -> None:
    """The trainer sets a featurizer's trained rows and SIF weights once it has them: the compiled encoder must
    read those, not the ones it was built with."""
    finetune = _featurizer(FeatureConfig(mode="finetune", buckets=5000, bigrams=True))
    texts = TEXTS[:400]
    before = finetune.encode(texts).inputs["token_ids"]
    finetune.trained = Featurizer(finetune.config, finetune.preprocessor, finetune.index,
                                  finetune.matrix).rows_reached(TEXTS[::3])
    _assert_same_bits(finetune.encode(texts), finetune.encode_python(texts), "trained rows set anew")
    assert finetune.encode(texts).inputs["token_ids"].tobytes() != before.tobytes()
    frozen = _featurizer(FeatureConfig(mode="frozen", sif=True))
    frozen.encode(texts)
    frozen.sif_weights = np.ones(len(VOCABULARY), dtype=np.float32)
    frozen.config = replace(frozen.config, pooling="mean_max")
    _assert_same_bits(frozen.encode(texts), frozen.encode_python(texts), "SIF weights and pooling set anew")
    assert frozen.encoder == "native"
