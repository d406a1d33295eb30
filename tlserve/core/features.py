"""From tokens to model inputs, shared by the trainer and the server.

Two feature kinds, one per transfer mode:

- ``frozen``: the (optionally SIF-weighted) mean of the in-vocabulary word vectors of the
  shared store, optionally concatenated with their element-wise max. The model is only
  a head over these features, so every frozen model reads the same memory-mapped table.
- ``finetune``: token ids for a graph that holds only the rows training changed: the store
  words of the training texts and the hashed rows (crc32 into ``buckets``, the hashing trick
  of fastText) that out-of-vocabulary words and word bigrams of the training texts reached
  (`TrainedRows`). Every other store word keeps its pretrained vector, read from the shared
  store and pooled here (``base_sum``, ``base_max``), so a finetuned model costs its trained
  rows, never a copy of the table. A hashed row no training text reached is zero. With
  ``static``, the graph also takes the frozen features of the shared store.

Either kind can add a lexical channel (``lexical``): the ids and TF-IDF weights of the
text's word uni- and bigrams in the bundle's lexicon (`tlserve.core.lexicon`), read by a linear
classifier in the graph, for the words and phrases the labels carry.

Both are computed for a whole batch at once: one vectorised lookup over all tokens, and
segment reductions (``np.add.reduceat``) for pooling, so no Python loop touches vectors.
A batch of a few tokens (a lone short text, the common call of a serving API) takes the
same pooling with the bookkeeping around it in plain Python, where NumPy's per-call cost
would dominate; the numbers are computed by the same reductions, so they are bit-identical.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import accumulate, pairwise
from typing import Any, Literal

import numpy as np

from tlserve.core.encoders import EncoderName, chosen_encoder, native_encoder
from tlserve.core.lexicon import CHAR_NGRAMS, MANY_CHAR_NGRAMS, MANY_NGRAMS, Lexicon, many_weights
from tlserve.core.preprocessing import Preprocessor, Units
from tlserve.core.ragged import pad
from tlserve.core.vector_store import MAX_PROBES, VocabularyIndex

Mode = Literal["frozen", "finetune"]
Pooling = Literal["mean", "mean_max"]

FROZEN_INPUT = "features"
FINETUNE_INPUT = "token_ids"
BASE_SUM_INPUT = "base_sum"
BASE_MAX_INPUT = "base_max"
LEXICON_IDS_INPUT = "lexicon_ids"
LEXICON_WEIGHTS_INPUT = "lexicon_weights"
OUTPUT = "probabilities"

# finetune token ids: 0 pads; a store word without a trained row reads the shared store (its vector
# is in base_sum / base_max); a hashed row no training text reached is zero; trained rows follow.
PADDING_ID = 0
BASE_ID = 1
ZERO_ID = 2
FIRST_TRAINED_ID = 3
# base_max of a text without shared-store words: below any vector, so it never wins the max.
NO_BASE = np.float32(-1e9)


@dataclass(frozen=True)
class FeatureConfig:
    """How tokens become model inputs; stored in the bundle manifest."""

    mode: Mode = "frozen"
    """"frozen": pooled store vectors feed the head; "finetune": token ids feed a graph with the rows it trained."""
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
    lexical_units: Units = "words"
    """The lexical channel's units: the tokens, the tokens and their character n-grams, or (Chinese) the characters
    of the normalised text (`tlserve.core.lexicon`)."""

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
            names = [FINETUNE_INPUT, BASE_SUM_INPUT]
            if self.pooling == "mean_max":
                names.append(BASE_MAX_INPUT)
            if self.static:
                names.append(FROZEN_INPUT)
        return [*names, LEXICON_IDS_INPUT, LEXICON_WEIGHTS_INPUT] if self.lexical else names


@dataclass(frozen=True)
class TrainedRows:
    """The rows a finetuned model trained: store rows and hashed rows, each sorted; their token ids follow
    each other from `FIRST_TRAINED_ID` (store rows first), in the graph's table."""

    store_rows: np.ndarray
    """int32, sorted: shared-store rows of the words of the training texts."""
    buckets: np.ndarray
    """int32, sorted: hashed rows the training texts' unknown words and bigrams reached."""

    def __len__(self) -> int:
        return len(self.store_rows) + len(self.buckets)

    def ids_of_store_rows(self, rows: np.ndarray) -> np.ndarray:
        """Token id of each store row (-1: not trained; negative rows are not in the store)."""
        return _positions(self.store_rows, rows, FIRST_TRAINED_ID)

    def ids_of_buckets(self, buckets: np.ndarray) -> np.ndarray:
        """Token id of each hashed row (-1: not trained)."""
        return _positions(self.buckets, buckets, FIRST_TRAINED_ID + len(self.store_rows))


def _positions(sorted_values: np.ndarray, values: np.ndarray, first_id: int) -> np.ndarray:
    """first_id + position of each of `values` in `sorted_values`, -1 where absent."""
    if not len(sorted_values):
        return np.full(len(values), -1, dtype=np.int64)
    positions = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return np.where(sorted_values[positions] == values, positions + first_id, -1).astype(np.int64)


@dataclass
class EncodedBatch:
    """Model input for a batch of texts, with per-text token statistics."""

    inputs: dict[str, np.ndarray]
    """Graph inputs by name: ``features`` float32 [n, F]; finetune: ``token_ids`` int64 [n, length] and
    ``base_sum`` (and ``base_max``) float32 [n, dim]; with the lexical channel, ``lexicon_ids`` int64 and
    ``lexicon_weights`` float32 [n, n-grams]."""
    token_counts: np.ndarray
    """int32 [n]: tokens per text after preprocessing."""
    oov_counts: np.ndarray
    """int32 [n]: tokens per text not in the vocabulary."""
    oov_fractions: np.ndarray = field(init=False)
    """float32 [n]: the share of each text's tokens not in the vocabulary (0 for a text without tokens)."""

    def __post_init__(self) -> None:
        self.oov_fractions = (self.oov_counts / np.maximum(self.token_counts, 1)).astype(np.float32)


# Up to this many tokens in a batch, `encode` does its bookkeeping in Python.
FEW_TOKENS = 48


_FIRST_ROW = np.zeros(1, dtype=np.int64)


def _segment_ids(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def _counts(tokens: list[list[str]]) -> np.ndarray:
    return np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))


def _bucket(key: str, buckets: int) -> int:
    return zlib.crc32(key.encode("utf-8")) % buckets


# What the compiled encoder is built from (see `Featurizer.__setattr__`).
_ENCODER_INPUTS = frozenset({"config", "index", "matrix", "sif_weights", "lexicon", "trained"})
_NOT_BUILT = object()


class Featurizer:
    """Encodes texts into model inputs.

    `index` and `matrix` are the shared store's vocabulary index and table. A finetuned model
    also needs its `trained` rows; the lexical channel, its `lexicon`.
    """

    _native: Any  # the compiled encoder, built on first use; _NOT_BUILT until then

    def __init__(
        self,
        config: FeatureConfig,
        preprocessor: Preprocessor,
        index: VocabularyIndex,
        matrix: np.ndarray,
        sif_weights: np.ndarray | None = None,
        lexicon: Lexicon | None = None,
        trained: TrainedRows | None = None,
    ) -> None:
        if config.lexical and lexicon is None:
            raise ValueError("the lexical channel needs the bundle's lexicon")
        self.config = config
        self.preprocessor = preprocessor
        self.index = index
        self.matrix = matrix
        self.sif_weights = sif_weights
        self.lexicon = lexicon
        self.trained = trained
        self.prefer_native = chosen_encoder() == "native"
        """Whether `encode` runs the compiled encoder (where this featurizer's arrays suit it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # The compiled encoder reads this featurizer's arrays: one set anew (the trainer sets the trained rows
        # and SIF weights once it has them) makes it build the encoder again on the next call.
        super().__setattr__(name, value)
        if name in _ENCODER_INPUTS:
            super().__setattr__("_native", _NOT_BUILT)

    @property
    def native(self) -> Any:
        """The compiled encoder `encode` runs, or None (the Python encoder runs)."""
        if not self.prefer_native:
            return None
        if self._native is _NOT_BUILT:
            super().__setattr__("_native", self._native_encoder())
        return self._native

    @property
    def encoder(self) -> EncoderName:
        """The encoder `encode` runs: "native" (compiled) or "python"."""
        return "native" if self.native is not None else "python"

    def _native_encoder(self) -> Any:
        """The compiled encoder over this featurizer's arrays, or None where they are not in the layout it reads
        (then `encode` runs the Python encoder)."""
        index, matrix, sif = self.index, self.matrix, self.sif_weights
        if self.config.mode == "finetune" and self.trained is None:
            return None  # the Python encoder names what is missing
        if index.slots is None or matrix.dtype != np.float32 or matrix.ndim != 2 \
                or not matrix.flags.c_contiguous or (sif is not None and sif.dtype != np.float32):
            return None
        lexicon = self.lexicon if self.config.lexical else None
        chars = lexicon is not None and lexicon.char_ngrams
        trained = self.trained
        return native_encoder(
            frozen=self.config.mode == "frozen", mean_max=self.config.pooling == "mean_max",
            static=self.config.static, buckets=self.config.buckets, bigrams=self.config.bigrams,
            words=index.words, rows=index.rows, slots=index.slots, max_probes=MAX_PROBES, search=index.search_bytes,
            matrix=matrix, sif=None if sif is None else np.ascontiguousarray(sif),
            store_rows=None if trained is None else np.ascontiguousarray(trained.store_rows, dtype=np.int32),
            trained_buckets=None if trained is None else np.ascontiguousarray(trained.buckets, dtype=np.int32),
            gram_hashes=None if lexicon is None else lexicon.hashes,
            gram_ids=None if lexicon is None else lexicon.ids,
            idf=None if lexicon is None else lexicon.idf,
            joiner=" " if lexicon is None else lexicon.joiner, many_weights=many_weights, many_ngrams=MANY_NGRAMS,
            many_char_ngrams=MANY_CHAR_NGRAMS, char_low=CHAR_NGRAMS[0] if chars else 0,
            char_high=CHAR_NGRAMS[1] if chars else 0,
            base_id=BASE_ID, zero_id=ZERO_ID, first_trained_id=FIRST_TRAINED_ID, no_base=float(NO_BASE))

    @property
    def feature_size(self) -> int:
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
        """Model inputs of `texts`, by the compiled encoder where this install has it (the same numbers)."""
        return self.encode_tokens(*self.preprocess(texts))

    def encode_tokens(self, tokens: list[list[str]], chars: list[list[str]] | None = None) -> EncodedBatch:
        """`encode` of texts already preprocessed: each text's tokens and, for a lexical channel of characters,
        its characters (`Preprocessor.batch_tokens_and_chars`). Explanations encode texts with a word left out."""
        native = self.native
        if native is None:
            return self._encode_python_tokens(tokens, chars)
        inputs, token_counts, oov_counts = native.encode(tokens, chars or tokens)
        return EncodedBatch(inputs, token_counts, oov_counts)

    def preprocess(self, texts: Sequence[str]) -> tuple[list[list[str]], list[list[str]] | None]:
        """Each text's tokens and, for a lexical channel of characters, its characters (else None): one pass
        of preprocessing for every channel, what `encode_tokens` reads."""
        lexical = self.lexicon if self.config.lexical else None
        return self.preprocessor.batch_tokens_and_chars(texts, lexical is not None and lexical.units == "chars")

    def encode_python(self, texts: Sequence[str]) -> EncodedBatch:
        """`encode` in Python: the reference the compiled encoder is checked against, and its fallback."""
        return self._encode_python_tokens(*self.preprocess(texts))

    def _encode_python_tokens(self, tokens: list[list[str]], chars: list[list[str]] | None) -> EncodedBatch:
        flat = [token for text_tokens in tokens for token in text_tokens]
        if len(flat) <= FEW_TOKENS:
            row_list = self.index.lookup_few(flat)
            encoded = self._encode_few(tokens, row_list) if self.config.mode == "frozen" else \
                self._encode_few_finetune(tokens, row_list)
            return self._add_lexical(chars or tokens, encoded)
        rows, counts = self.index.lookup(flat), _counts(tokens)
        known = rows >= 0
        oov = np.bincount(_segment_ids(counts)[~known], minlength=len(tokens)).astype(np.int32)
        inputs: dict[str, np.ndarray] = {}
        if self.config.mode == "frozen":
            inputs[FROZEN_INPUT] = self._pool(rows, counts, known)
        else:
            inputs.update(self._finetune_inputs(tokens, rows))
            if self.config.static:
                inputs[FROZEN_INPUT] = self._pool(rows, counts, known)
        return self._add_lexical(chars or tokens, EncodedBatch(inputs, counts.astype(np.int32), oov))

    def _add_lexical(self, units: list[list[str]], encoded: EncodedBatch) -> EncodedBatch:
        """With a lexical channel, its inputs from each text's `units` (tokens or characters)."""
        if self.lexicon is not None and self.config.lexical:
            ids, weights = self.lexicon.encode(units)
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

    def _encode_few_finetune(self, tokens: list[list[str]], rows: list[int]) -> EncodedBatch:
        """`encode` (finetune) of a few tokens, `rows` from `VocabularyIndex.lookup_few`."""
        inputs = self._finetune_inputs(tokens, np.array(rows, dtype=np.int32))
        if self.config.static:
            encoded = self._encode_few(tokens, rows)
            encoded.inputs = {**inputs, **encoded.inputs}
            return encoded
        lengths = [len(text_tokens) for text_tokens in tokens]
        unknown = [sum(1 for row in rows[start:end] if row < 0) for start, end in pairwise([0, *accumulate(lengths)])]
        return EncodedBatch(inputs, np.array(lengths, dtype=np.int32), np.array(unknown, dtype=np.int32))

    def _pool(self, rows: np.ndarray, counts: np.ndarray, known: np.ndarray) -> np.ndarray:
        known_counts = np.bincount(_segment_ids(counts)[known], minlength=len(counts))
        return self._pool_known(rows[known], known_counts)

    def _pool_known(self, known_rows: np.ndarray, known_counts: np.ndarray) -> np.ndarray:
        """Pooled vectors of each text from its in-vocabulary rows (all texts' rows, in order)."""
        n, dim = len(known_counts), int(self.matrix.shape[1])
        # take: the same rows at a third of fancy indexing's cost, which counts on a one-text call.
        vectors = np.asarray(self.matrix.take(known_rows, axis=0), dtype=np.float32)
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

    def rows_reached(self, texts: Sequence[str], min_bigram_texts: int = 1) -> TrainedRows:
        """The rows `texts` reach: their words' store rows and the hashed rows of their unknown words and of
        the bigrams `min_bigram_texts` of them or more have. Of the training texts, these are the rows
        training changes; a bigram whose hashed row is not among them is left out of a text."""
        tokens, rows, _ = self.lookup(texts)
        buckets: set[int] = set()
        if self.config.buckets:
            bigram_texts: Counter[str] = Counter()
            for unknown, bigrams in self._hashed_keys(tokens, rows):
                buckets.update(_bucket(key, self.config.buckets) for key in unknown)
                bigram_texts.update(set(bigrams))
            buckets.update(_bucket(key, self.config.buckets) for key, count in bigram_texts.items()
                           if count >= min_bigram_texts)
        return TrainedRows(np.unique(rows[rows >= 0]).astype(np.int32), np.array(sorted(buckets), dtype=np.int32))

    def _hashed_keys(self, tokens: list[list[str]], rows: np.ndarray) -> list[tuple[list[str], list[str]]]:
        """Per text, what gets a hashed row: its words not in the store, and (with bigrams) its word pairs."""
        unknown = rows < 0
        out = []
        position = 0
        for text_tokens in tokens:
            words = [token for token, missing in zip(text_tokens, unknown[position : position + len(text_tokens)],
                                                     strict=True) if missing]
            position += len(text_tokens)
            out.append((words, [f"{a}\x1f{b}" for a, b in pairwise(text_tokens)] if self.config.bigrams else []))
        return out

    def _finetune_inputs(self, tokens: list[list[str]], rows: np.ndarray) -> dict[str, np.ndarray]:
        """Token ids (a text's store words, its unknown words, then its bigrams), and the sum (and max) of the
        shared vectors of its store words that have no trained row."""
        if self.trained is None:
            raise ValueError("finetune features need the model's trained rows")
        buckets = self.config.buckets
        trained_ids = self.trained.ids_of_store_rows(rows).tolist()
        row_list = rows.tolist()
        # Until one lookup maps them all: an unknown word as -(bucket + 1), a bigram as -(buckets + bucket + 1).
        codes: list[int] = []
        texts: list[int] = []
        base_rows: list[int] = []
        base_counts: list[int] = []
        position = 0
        for text, (text_tokens, (unknown, bigrams)) in enumerate(zip(
                tokens, self._hashed_keys(tokens, rows) if buckets else [([], [])] * len(tokens), strict=True)):
            before, base_before = len(codes), len(base_rows)
            for row, trained_id in zip(row_list[position : position + len(text_tokens)],
                                       trained_ids[position : position + len(text_tokens)], strict=True):
                if trained_id >= 0:
                    codes.append(trained_id)
                elif row >= 0:
                    codes.append(BASE_ID)
                    base_rows.append(row)
            position += len(text_tokens)
            codes.extend(-1 - _bucket(key, buckets) for key in unknown)
            codes.extend(-1 - buckets - _bucket(key, buckets) for key in bigrams)
            texts.extend([text] * (len(codes) - before))
            base_counts.append(len(base_rows) - base_before)
        flat, segment = np.array(codes, dtype=np.int64), np.array(texts, dtype=np.int64)
        hashed = flat < 0
        if hashed.any():
            # One lookup for every hashed key; an untrained unknown word reads the zero row, an untrained
            # bigram is left out.
            bigram = flat[hashed] < -buckets
            found = self.trained.ids_of_buckets(np.where(bigram, -1 - buckets - flat[hashed], -1 - flat[hashed]))
            flat[hashed] = np.where((found < 0) & ~bigram, ZERO_ID, found)
            kept = flat >= 0
            flat, segment = flat[kept], segment[kept]
        if len(tokens) == 1:  # the one-text call of a serving API: no segment bookkeeping
            ids = flat[None, :] if len(flat) else np.zeros((1, 1), dtype=np.int64)
        else:
            (ids,) = pad(np.bincount(segment, minlength=len(tokens)), (flat, np.int64))
        inputs = {FINETUNE_INPUT: ids}
        inputs.update(self._base_pool(base_rows, base_counts))
        return inputs

    def _base_pool(self, base_rows: list[int], base_counts: list[int]) -> dict[str, np.ndarray]:
        """Sum (and max, `NO_BASE` where a text has none) of the shared vectors of each text's untrained words."""
        n, dim = len(base_counts), int(self.matrix.shape[1])
        mean_max = self.config.pooling == "mean_max"
        if n == 1 and base_rows:
            # One text: the same reductions without the segment bookkeeping (bit-identical).
            vectors = np.asarray(self.matrix.take(base_rows, axis=0), dtype=np.float32)
            total = np.add.reduceat(vectors, _FIRST_ROW, axis=0)
            if not mean_max:
                return {BASE_SUM_INPUT: total}
            return {BASE_SUM_INPUT: total, BASE_MAX_INPUT: np.maximum.reduceat(vectors, _FIRST_ROW, axis=0)}
        total = np.zeros((n, dim), dtype=np.float32)
        maximum = np.full((n, dim), NO_BASE, dtype=np.float32) if mean_max else total
        if base_rows:
            vectors = np.asarray(self.matrix.take(base_rows, axis=0), dtype=np.float32)
            counts = np.array(base_counts, dtype=np.int64)
            nonempty = counts > 0
            starts = (np.cumsum(counts) - counts)[nonempty]
            total[nonempty] = np.add.reduceat(vectors, starts, axis=0)
            if mean_max:
                maximum[nonempty] = np.maximum.reduceat(vectors, starts, axis=0)
        if mean_max:
            return {BASE_SUM_INPUT: total, BASE_MAX_INPUT: maximum}
        return {BASE_SUM_INPUT: total}
