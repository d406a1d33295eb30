"""Explanations: each word's contribution is the model's own answer without the word, on either encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tlserve.core.explanations import MAX_WORDS, explain
from tlserve.core.lexicon import Lexicon
from tlserve.core.scorer import Scorer
from tlserve.core.vector_store import VectorStore

from tiny_models import make_model, sample_texts

TEXTS = ["a small domesticated cat kept as a pet", "a tall tree with hard wood and a cat in it", "oak", "x"]


def _scorer(tmp_path: Path, tiny_store: Path, lexicon: Lexicon | None = None) -> Scorer:
    return Scorer.open(make_model(tmp_path / "repo", "tiny", VectorStore(tiny_store), lexicon=lexicon))


def _top_probability(scorer: Scorer, text: str, label: str) -> float:
    return float(scorer.predict([text]).probabilities[0, scorer.labels.index(label)])


@pytest.mark.parametrize("encoder", ["native", "python"])
def test_a_contribution_is_the_drop_of_the_top_label_when_the_word_is_left_out(tmp_path: Path, tiny_store: Path,
                                                                               encoder: str) -> None:
    scorer = _scorer(tmp_path, tiny_store)
    if encoder == "python":
        scorer.featurizer.prefer_native = False
    elif scorer.featurizer.encoder != "native":
        pytest.skip("the compiled encoder is not built in this install")
    explanations = explain(scorer, TEXTS, words=0)
    answers = scorer.predict(TEXTS).probabilities
    for text, explanation, answer in zip(TEXTS, explanations, answers, strict=True):
        assert explanation.label == scorer.labels[int(np.argmax(answer))]
        assert explanation.probability == pytest.approx(float(answer.max()), abs=1e-6)
        tokens = scorer.featurizer.preprocessor.tokens(text)
        assert sorted(w.word for w in explanation.words) == sorted(set(tokens))  # words=0: every word
        contributions = [w.contribution for w in explanation.words]
        assert contributions == sorted(contributions, reverse=True)
        for word in explanation.words:
            assert word.count == tokens.count(word.word)
            without = " ".join(token for token in tokens if token != word.word)
            assert word.contribution == pytest.approx(
                explanation.probability - _top_probability(scorer, without, explanation.label), abs=1e-6)
    # "a" twice in the first text: left out together, counted twice.
    assert next(w for w in explanations[0].words if w.word == "a").count == 2
    assert [len(e.words) for e in explain(scorer, TEXTS, words=2)] == [2, 2, 1, 1]


def test_a_long_text_examines_its_first_distinct_words_only(tmp_path: Path, tiny_store: Path) -> None:
    scorer = _scorer(tmp_path, tiny_store)
    words = sorted({w for text in sample_texts() for w in text.lower().split() if w.isalpha()})
    text = " ".join(words[: MAX_WORDS + 40] * 2)
    (explanation,) = explain(scorer, [text], words=0)
    assert {w.word for w in explanation.words} == set(words[:MAX_WORDS])
    assert all(w.count == 2 for w in explanation.words)


def test_a_character_channel_loses_the_words_characters(tmp_path: Path, tiny_store: Path) -> None:
    texts = [text.lower() for text in sample_texts()[:200]]
    lexicon = Lexicon.fit([list(" ".join(text.split())) for text in texts], 300, units="chars")
    scorer = _scorer(tmp_path, tiny_store, lexicon)
    text = "a small dog that barks at the mail carrier"
    (explanation,) = explain(scorer, [text], words=0)
    for word in explanation.words:
        if sum(word.word in other for other in text.split()) > 1:
            continue  # inside another word too ("a"): the text without it is not a text with a word deleted
        without = " ".join(text.replace(word.word, "").split())
        assert word.contribution == pytest.approx(
            explanation.probability - _top_probability(scorer, without, explanation.label), abs=1e-6), word
