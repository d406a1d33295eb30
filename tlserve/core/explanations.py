"""Why a model gave its answer: the words the answer owes most, measured by leaving each one out.

Each distinct word of a text (its first `MAX_WORDS`, in order of appearance) is left out in turn,
every occurrence of it, and the text without it is scored again: the text and all its variants
in one onnxruntime call. A word's contribution is the top label's probability on the whole text
minus its probability on the text without the word: the probability points the answer owes the
word (negative: the word pulls the other way). It is the model's own answer on the changed text,
so it holds alike for the lexical channel, the vectors' channel and their mixture, with no
approximation; it does not add up to the probability when words act together (two synonyms may
each contribute little because the other remains).

A model whose lexical channel reads characters (Chinese) loses the word's characters wherever
they appear (in a longer word too). The cost is one batch of (distinct words + 1) texts: off by default in every
front end, and bounded by `MAX_WORDS`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tlserve.core.features import OUTPUT
from tlserve.core.ranking import rank

if TYPE_CHECKING:
    from tlserve.core.scorer import Scorer

MAX_WORDS = 64
"""Distinct words left out per text (the first met): a 64-word text costs one batch of 65 rows."""


@dataclass(frozen=True)
class WordContribution:
    word: str
    """The word as the model reads it (after normalisation and lower-casing)."""
    contribution: float
    """Top label's probability with the text minus without this word (every occurrence)."""
    count: int
    """Occurrences of the word in the text."""


@dataclass(frozen=True)
class Explanation:
    label: str
    """The top label."""
    probability: float
    """Its probability for the whole text."""
    words: list[WordContribution]
    """The words with the largest contributions, largest first."""


def explain(scorer: Scorer, texts: list[str], words: int = 5) -> list[Explanation]:
    """Each text's top label and the `words` words it owes most (`words` 0: every word examined)."""
    featurizer = scorer.featurizer
    tokens, chars = featurizer.preprocess(texts)
    explanations = []
    for i, text_tokens in enumerate(tokens):
        counts = Counter(text_tokens)  # in order of first appearance
        distinct = list(counts)[:MAX_WORDS]
        variants = [text_tokens] + [[token for token in text_tokens if token != word] for word in distinct]
        variant_chars = None
        if chars is not None:
            whole = "".join(chars[i])
            # As the preprocessor makes characters: whitespace runs as one space, none at either end.
            variant_chars = [chars[i]] + [list(" ".join(whole.replace(word, "").split())) for word in distinct]
        encoded = featurizer.encode_tokens(variants, variant_chars)
        probabilities = scorer.session.run([OUTPUT], encoded.inputs)[0]
        best = int(rank(probabilities[:1], 1)[0, 0])
        drops = probabilities[0, best] - probabilities[1:, best]
        order = np.argsort(-drops, kind="stable")[: words or len(distinct)]
        explanations.append(Explanation(
            scorer.labels[best], float(probabilities[0, best]),
            [WordContribution(distinct[j], float(drops[j]), counts[distinct[j]]) for j in order.tolist()]))
    return explanations
