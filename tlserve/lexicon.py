"""The lexical channel's vocabulary: word uni- and bigrams with their IDF, shared by trainer and server.

A model's lexical channel is a linear classifier over TF-IDF features of the text's own
tokens (the same tokens the rest of the model sees): for each n-gram of the lexicon present
in a text, the weight ``(1 + ln tf) * idf``, the whole L2-normalised, as scikit-learn's
``TfidfVectorizer(sublinear_tf=True)`` computes them. The trainer fits the classifier; the
graph gathers its rows by n-gram id and sums them with these weights, so a text costs a few
dictionary lookups, never a dense vector of the whole lexicon.

Files in the bundle: ``lexicon.txt`` (one n-gram per line, UTF-8; a bigram is its two tokens
joined by a space, which no token contains) and ``lexicon_idf.npy`` (float32, one per line).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np

from tlserve.errors import BundleError

LEXICON_FILE = "lexicon.txt"
LEXICON_IDF_FILE = "lexicon_idf.npy"


def ngrams(tokens: Sequence[str]) -> list[str]:
    """A text's unigrams followed by its bigrams."""
    return [*tokens, *(f"{a} {b}" for a, b in pairwise(tokens))]


class Lexicon:
    """N-grams, their ids (1 + position; 0 is padding) and IDF weights."""

    def __init__(self, grams: list[str], idf: np.ndarray) -> None:
        if len(grams) != len(idf):
            raise ValueError(f"{len(grams)} n-grams but {len(idf)} IDF weights")
        self.grams = grams
        self.idf = np.asarray(idf, dtype=np.float32)
        self.ids = {gram: i + 1 for i, gram in enumerate(grams)}

    def __len__(self) -> int:
        return len(self.grams)

    @classmethod
    def fit(cls, token_lists: Sequence[Sequence[str]], max_size: int) -> Lexicon:
        """The `max_size` n-grams found in most texts, with scikit-learn's smoothed IDF."""
        document_frequency: Counter[str] = Counter()
        for tokens in token_lists:
            document_frequency.update(set(ngrams(tokens)))
        # Most frequent first; ties in a fixed (alphabetical) order so training is reproducible.
        kept = sorted(document_frequency.items(), key=lambda item: (-item[1], item[0]))[:max_size]
        n = len(token_lists)
        idf = np.array([math.log((1 + n) / (1 + df)) + 1.0 for _, df in kept], dtype=np.float32)
        return cls([gram for gram, _ in kept], idf)

    def encode(self, token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Ids int64 [n, L] and TF-IDF weights float32 [n, L] of each text's known n-grams (0-padded)."""
        ids_per_text: list[list[int]] = []
        weights_per_text: list[np.ndarray] = []
        for tokens in token_lists:
            counts = Counter(self.ids[gram] for gram in ngrams(tokens) if gram in self.ids)
            ids = list(counts)
            if ids:
                tf = np.fromiter(counts.values(), dtype=np.float32, count=len(ids))
                weights = (1.0 + np.log(tf)) * self.idf[np.array(ids) - 1]
                weights /= np.float32(np.sqrt(np.dot(weights, weights)))
            else:
                weights = np.zeros(0, dtype=np.float32)
            ids_per_text.append(ids)
            weights_per_text.append(weights)
        length = max(1, max((len(ids) for ids in ids_per_text), default=1))
        id_array = np.zeros((len(ids_per_text), length), dtype=np.int64)
        weight_array = np.zeros((len(ids_per_text), length), dtype=np.float32)
        for row, (ids, weights) in enumerate(zip(ids_per_text, weights_per_text, strict=True)):
            id_array[row, : len(ids)] = ids
            weight_array[row, : len(ids)] = weights
        return id_array, weight_array

    def save(self, folder: Path) -> None:
        (folder / LEXICON_FILE).write_text("".join(f"{gram}\n" for gram in self.grams), encoding="utf-8")
        np.save(folder / LEXICON_IDF_FILE, self.idf, allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> Lexicon:
        path = folder / LEXICON_FILE
        grams = path.read_text(encoding="utf-8").split("\n")[:-1]
        idf = np.load(folder / LEXICON_IDF_FILE, allow_pickle=False)
        if idf.ndim != 1 or len(idf) != len(grams):
            raise BundleError(f"{path}: {len(grams)} n-grams but {folder / LEXICON_IDF_FILE} holds shape "
                              f"{list(idf.shape)}")
        return cls(grams, idf)
