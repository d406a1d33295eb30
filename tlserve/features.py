"""From tokens to model inputs, shared by the trainer and the server.

Two feature kinds, one per transfer mode:

- ``frozen``: the (optionally SIF-weighted) mean of the in-vocabulary word vectors of the
  shared store, optionally concatenated with their element-wise max. The model is only
  a head over these features, so every frozen model reads the same memory-mapped table.
- ``finetune``: token ids for a graph that holds its own, adapted embedding table. Words
  of the bundle's vocabulary get ``1 + row``; out-of-vocabulary words and word bigrams
  are hashed (crc32) into ``buckets`` extra rows, the hashing trick of fastText, so the
  model learns the task's own words and phrases too. Id 0 is padding. With ``static``,
  the graph also takes the frozen features of the shared store: the adapted table
  learns the task, the shared store keeps every pretrained word the labels never showed.

Either kind can add a lexical channel (``lexical``): the ids and TF-IDF weights of the
text's word uni- and bigrams in the bundle's lexicon (`tlserve.lexicon`), read by a linear
classifier in the graph, for the words and phrases the labels carry.

Both are computed for a whole batch at once: one vectorised lookup over all tokens, and
segment reductions (``np.add.reduceat``) for pooling, so no Python loop touches vectors.
A batch of a few tokens (a lone short text, the common call of a serving API) takes the
same pooling with the bookkeeping around it in plain Python, where NumPy's per-call cost
would dominate; the numbers are computed by the same reductions, so they are bit-identical.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np

from tlserve.lexicon import Lexicon
from tlserve.preprocessing import Preprocessor
from tlserve.vector_store import VocabularyIndex

Mode = Literal["frozen", "finetune"]
Pooling = Literal["mean", "mean_max"]

FROZEN_INPUT = "features"
FINETUNE_INPUT = "token_ids"
LEXICON_IDS_INPUT = "lexicon_ids"
LEXICON_WEIGHTS_INPUT = "lexicon_weights"
OUTPUT = "probabilities"


@dataclass(frozen=True)
class FeatureConfig:
    """How tokens become model inputs; stored in the bundle manifest."""

    mode: Mode = "frozen"
    """"frozen": pooled store vectors feed the head; "finetune": token ids feed a graph with its own table."""
    pooling: Pooling = "mean"
    """"mean", or "mean_max" (mean and element-wise max, concatenated)."""
    sif: bool = False
    """frozen only: weight each word a/(a+p(w)) with p(w) from the training texts (weights in the bundle)."""
    buckets: int = 0
    """finetune only: hashed rows for out-of-vocabulary words and word bigrams (0 disables both)."""
    bigrams: bool = False
    """finetune only: add hashed word bigrams as extra tokens."""
    static: bool = False
    """finetune only: also feed the pooled vectors of the shared store (a frozen channel)."""
    lexical: bool = False
    """Also feed the ids and TF-IDF weights of the text's n-grams in the bundle's lexicon (a lexical channel)."""
    lexical_units: Literal["words", "chars"] = "words"
    """The lexical channel's units: the tokens, or (Chinese) the characters of the normalised text."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_names(self) -> list[str]:
        """Every graph input, in order: token ids, pooled features, the lexical channel's two."""
        if self.mode == "frozen":
            names = [FROZEN_INPUT]
        else:
            names = [FINETUNE_INPUT, FROZEN_INPUT] if self.static else [FINETUNE_INPUT]
        return [*names, LEXICON_IDS_INPUT, LEXICON_WEIGHTS_INPUT] if self.lexical else names

    @property
    def uses_shared_store(self) -> bool:
        return self.mode == "frozen" or self.static


@dataclass
class EncodedBatch:
    """Model input for a batch of texts, with per-text token statistics."""

    inputs: dict[str, np.ndarray]
    """Graph inputs by name: ``features`` float32 [n, F] and/or ``token_ids`` int64 [n, length]; with the
    lexical channel, ``lexicon_ids`` int64 and ``lexicon_weights`` float32 [n, n-grams]."""
    token_counts: np.ndarray
    """int32 [n]: tokens per text after preprocessing."""
    oov_counts: np.ndarray
    """int32 [n]: tokens per text not in the vocabulary."""

    @property
    def oov_fractions(self) -> np.ndarray:
        counts = np.maximum(self.token_counts, 1)
        return (self.oov_counts / counts).astype(np.float32)


# Up to this many tokens in a batch, `encode` does its bookkeeping in Python.
FEW_TOKENS = 48


_FIRST_ROW = np.zeros(1, dtype=np.int64)


def _segment_ids(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def _counts(tokens: list[list[str]]) -> np.ndarray:
    return np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))


def _bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % buckets


class Featurizer:
    """Encodes texts into model inputs.

    `index` and `vocabulary_size` describe the vocabulary of token ids and OOV counts: the
    shared store's (frozen) or the bundle's own (finetune). `matrix` and `store_index` are
    the shared store's table and index, for pooled features (frozen, or finetune + static).
    """

    def __init__(
        self,
        config: FeatureConfig,
        preprocessor: Preprocessor,
        index: VocabularyIndex,
        vocabulary_size: int,
        matrix: np.ndarray | None = None,
        sif_weights: np.ndarray | None = None,
        store_index: VocabularyIndex | None = None,
        lexicon: Lexicon | None = None,
    ) -> None:
        if config.uses_shared_store and matrix is None:
            raise ValueError("pooled features need the shared store's matrix")
        if config.lexical and lexicon is None:
            raise ValueError("the lexical channel needs the bundle's lexicon")
        self.config = config
        self.preprocessor = preprocessor
        self.index = index
        self.vocabulary_size = vocabulary_size
        self.matrix = matrix
        self.sif_weights = sif_weights
        self.store_index = store_index if store_index is not None else index
        self.lexicon = lexicon

    @property
    def feature_size(self) -> int:
        assert self.matrix is not None
        width = int(self.matrix.shape[1])
        return 2 * width if self.config.pooling == "mean_max" else width

    def _tokens(self, texts: Sequence[str]) -> tuple[list[list[str]], list[str]]:
        """Tokens per text, and all of them in one flat list."""
        tokens = self.preprocessor.batch_tokens(texts)
        return tokens, [token for text_tokens in tokens for token in text_tokens]

    def lookup(self, texts: Sequence[str]) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """Tokens per text, their rows (flat, -1 if unknown) and the token count per text."""
        tokens, flat = self._tokens(texts)
        return tokens, self.index.lookup(flat), _counts(tokens)

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        tokens, flat = self._tokens(texts)
        if self.config.mode == "frozen" and len(flat) <= FEW_TOKENS:
            return self._add_lexical(texts, tokens, self._encode_few(tokens, self.index.lookup_few(flat)))
        rows, counts = self.index.lookup(flat), _counts(tokens)
        known = rows >= 0
        oov = np.bincount(_segment_ids(counts)[~known], minlength=len(texts)).astype(np.int32)
        inputs: dict[str, np.ndarray] = {}
        if self.config.mode == "frozen":
            inputs[FROZEN_INPUT] = self._pool(rows, counts, known)
        else:
            inputs[FINETUNE_INPUT] = self._token_ids(tokens, rows)
            if self.config.static:
                store_rows = self.store_index.lookup(flat)
                inputs[FROZEN_INPUT] = self._pool(store_rows, counts, store_rows >= 0)
        return self._add_lexical(texts, tokens, EncodedBatch(inputs, counts.astype(np.int32), oov))

    def _add_lexical(self, texts: Sequence[str], tokens: list[list[str]], encoded: EncodedBatch) -> EncodedBatch:
        if self.lexicon is not None and self.config.lexical:
            ids, weights = self.lexicon.encode(self.lexicon.units_of(self.preprocessor, texts, tokens))
            encoded.inputs[LEXICON_IDS_INPUT] = ids
            encoded.inputs[LEXICON_WEIGHTS_INPUT] = weights
        return encoded

    def _encode_few(self, tokens: list[list[str]], rows: list[int]) -> EncodedBatch:
        """`encode` (frozen) of a few tokens, `rows` from `VocabularyIndex.lookup_few`."""
        known_rows: list[int] = []
        known_counts: list[int] = []
        oov: list[int] = []
        start = 0
        for text_tokens in tokens:
            end = start + len(text_tokens)
            known = [row for row in rows[start:end] if row >= 0]
            known_rows.extend(known)
            known_counts.append(len(known))
            oov.append(end - start - len(known))
            start = end
        pooled = self._pool_known(np.array(known_rows, dtype=np.int32), np.array(known_counts, dtype=np.int64))
        return EncodedBatch({FROZEN_INPUT: pooled}, np.array([len(t) for t in tokens], dtype=np.int32),
                            np.array(oov, dtype=np.int32))

    def _pool(self, rows: np.ndarray, counts: np.ndarray, known: np.ndarray) -> np.ndarray:
        known_counts = np.bincount(_segment_ids(counts)[known], minlength=len(counts))
        return self._pool_known(rows[known], known_counts)

    def _pool_known(self, known_rows: np.ndarray, known_counts: np.ndarray) -> np.ndarray:
        """Pooled vectors of each text from its in-vocabulary rows (all texts' rows, in order)."""
        assert self.matrix is not None
        n, dim = len(known_counts), int(self.matrix.shape[1])
        vectors = np.asarray(self.matrix[known_rows], dtype=np.float32)
        if self.sif_weights is not None:
            vectors = vectors * self.sif_weights[known_rows, None]
        if n == 1 and len(known_rows):
            # One text: the same reductions without the segment bookkeeping.
            mean = np.add.reduceat(vectors, _FIRST_ROW, axis=0) / np.float32(len(known_rows))
            if self.config.pooling == "mean":
                return mean
            return np.concatenate([mean, np.maximum.reduceat(vectors, _FIRST_ROW, axis=0)], axis=1)
        nonempty = known_counts > 0
        starts = (np.cumsum(known_counts) - known_counts)[nonempty]
        mean = np.zeros((n, dim), dtype=np.float32)
        if len(known_rows):
            sums = np.add.reduceat(vectors, starts, axis=0)
            mean[nonempty] = sums / known_counts[nonempty, None].astype(np.float32)
        if self.config.pooling == "mean":
            return mean
        maximum = np.zeros((n, dim), dtype=np.float32)
        if len(known_rows):
            maximum[nonempty] = np.maximum.reduceat(vectors, starts, axis=0)
        return np.concatenate([mean, maximum], axis=1)

    def _token_ids(self, tokens: list[list[str]], rows: np.ndarray) -> np.ndarray:
        buckets, offset = self.config.buckets, 1 + self.vocabulary_size
        ids_per_text: list[list[int]] = []
        position = 0
        for text_tokens in tokens:
            ids: list[int] = []
            for token in text_tokens:
                row = int(rows[position])
                position += 1
                if row >= 0:
                    ids.append(1 + row)
                elif buckets:
                    ids.append(offset + _bucket(token, buckets))
            if buckets and self.config.bigrams:
                ids.extend(
                    offset + _bucket(f"{a}\x1f{b}", buckets)
                    for a, b in pairwise(text_tokens)
                )
            ids_per_text.append(ids)
        length = max(1, max((len(ids) for ids in ids_per_text), default=1))
        out = np.zeros((len(tokens), length), dtype=np.int64)
        for i, ids in enumerate(ids_per_text):
            out[i, : len(ids)] = ids
        return out
