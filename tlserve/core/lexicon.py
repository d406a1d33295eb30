"""The lexical channel's vocabulary: uni- and bigrams with their IDF, shared by trainer and server.

A model's lexical channel is a linear classifier over TF-IDF features of the text's
uni- and bigrams: for each n-gram of the lexicon present in a text, the weight
``(1 + ln tf) * idf``, the whole L2-normalised, as scikit-learn's
``TfidfVectorizer(sublinear_tf=True)`` computes them. The units are the model's own tokens
(``words``), or, for Chinese, the characters of the normalised text (``chars``, punctuation
and digits included): a Chinese headline is a handful of jieba words, and character pairs
generalise better (THUCNews, 10 % of the labels: 0.74 with character 1-2-grams against 0.66
with word 1-2-grams). With ``words+chars``, each token also gives its character n-grams: the
2- to 5-grams of the token between boundary marks (``<walk>``: ``<w``, ``wa``, ... ``alk>``), as
scikit-learn's ``char_wb`` analyzer reads words, so a lexicon learns from "configure" what
"configuration" shares with it; the word n-grams and the character n-grams are weighted and
L2-normalised as two blocks, each as above (scikit-learn's union of two vectorizers), so the
many character n-grams of a text do not drown its words. The trainer fits the classifier; the
graph gathers its rows by n-gram id and sums them with these weights, so a text costs a few
dictionary lookups, never a dense vector of the whole lexicon.

In memory, the n-grams are an index, not a dictionary: the hashes of their UTF-8 bytes sorted
in one NumPy array beside their ids, looked up with one `searchsorted` per batch. A dictionary
of 37,000 n-grams holds 4.8 MB of Python objects in every loaded model; the index holds 12 bytes
per n-gram, which matters when one server holds a thousand models. The hash is Python's 64-bit
SipHash of the UTF-8 bytes (the chance that some text's n-gram takes the hash of a lexicon n-gram
is about one in 10^14 per n-gram); two lexicon n-grams with one hash are detected and refused.
Not the hash of the str itself: CPython hashes a string's internal bytes, so strings of
different widths collide by construction (' c', two 1-byte characters, and '挠', U+6320, one
2-byte character, have one hash), which Chinese text mixed with ASCII hits every day.

In a bundle (written and read by `tlserve.core.bundle`): ``lexicon.txt`` (one n-gram per line, UTF-8;
a bigram is its two tokens joined by a space, which no token contains; a character bigram is its
two characters; a character n-gram within a word is ``#`` and the n-gram, ``#<wa``, a mark no
token of the latin tokenizer contains) and ``lexicon_idf.npy`` (float32, one per line). The unit kind is in the bundle's
feature config.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from tlserve.core.preprocessing import Units
from tlserve.core.ragged import pad

__all__ = ["CHAR_NGRAMS", "MANY_CHAR_NGRAMS", "MANY_NGRAMS", "Lexicon", "Units", "char_ngrams", "many_weights",
           "ngrams"]
# Up to this many n-grams, lookups and a text's weights are computed in plain Python (and by the compiled
# encoder); beyond, with NumPy (`many_weights`).
MANY_NGRAMS = 64
# The same for the block of a text's character n-grams within words (a short text has a hundred or more): a
# plain loop in C costs less than a NumPy call up to here.
MANY_CHAR_NGRAMS = 1024
# The lengths of the character n-grams within words (of the token between its boundary marks).
CHAR_NGRAMS = (2, 5)


def ngrams(units: Sequence[str], joiner: str = " ") -> list[str]:
    """A text's unigrams followed by its bigrams (units joined by `joiner`)."""
    return [*units, *(f"{a}{joiner}{b}" for a, b in pairwise(units))]


def char_ngrams(tokens: Sequence[str]) -> list[str]:
    """Each token's character n-grams (lengths `CHAR_NGRAMS`) of ``<token>``, marked ``#``: token by token, then
    by length, then by position."""
    low, high = CHAR_NGRAMS
    out: list[str] = []
    for token in tokens:
        marked = f"<{token}>"
        for n in range(low, min(high, len(marked)) + 1):
            out.extend("#" + marked[i : i + n] for i in range(len(marked) - n + 1))
    return out


def _hashes(grams: Sequence[str]) -> list[int]:
    """64-bit hash of each n-gram's UTF-8 bytes (see the module docstring for why not of the str)."""
    # surrogatepass: a lone surrogate (JSON can spell one) still has bytes of its own.
    return [hash(gram.encode("utf-8", "surrogatepass")) for gram in grams]


def many_weights(tf: np.ndarray, idf: np.ndarray) -> np.ndarray:
    """L2-normalised ``(1 + ln tf) * idf`` (float64) of a text of many n-grams; the compiled encoder calls
    this very function for such texts, so both get NumPy's rounding."""
    array = (1.0 + np.log(tf)) * idf
    result: np.ndarray = array / np.sqrt(np.dot(array, array))
    return result


class Lexicon:
    """N-grams, their ids (1 + position; 0 is padding) and IDF weights.

    `grams` (the strings) is kept where the lexicon is written (training) and dropped where
    it is only read (`load`): lookups use the hash index.
    """

    def __init__(self, grams: list[str], idf: np.ndarray, units: Units = "words", keep_grams: bool = True) -> None:
        if len(grams) != len(idf):
            raise ValueError(f"{len(grams)} n-grams but {len(idf)} IDF weights")
        self.units = units
        self.joiner = "" if units == "chars" else " "
        self.char_ngrams = units == "words+chars"
        self.grams: list[str] | None = grams if keep_grams else None
        self.idf = np.asarray(idf, dtype=np.float32)
        hashes = np.array(_hashes(grams), dtype=np.int64)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._ids = (order + 1).astype(np.int32)
        if len(grams) > 1 and np.any(self._hashes[1:] == self._hashes[:-1]):
            same = int(np.flatnonzero(self._hashes[1:] == self._hashes[:-1])[0])
            first, second = sorted((int(order[same]), int(order[same + 1])))
            if grams[first] == grams[second]:
                raise ValueError(f"n-gram {grams[first]!r} is listed twice (lines {first + 1} and {second + 1})")
            raise ValueError(f"n-grams {grams[first]!r} and {grams[second]!r} share one hash")

    def __len__(self) -> int:
        return len(self.idf)

    @property
    def hashes(self) -> np.ndarray:
        """int64, sorted: the n-grams' hashes (see the module docstring)."""
        return self._hashes

    @property
    def ids(self) -> np.ndarray:
        """int32: the id of the n-gram of each of `hashes`."""
        return self._ids

    def ids_of(self, grams: Sequence[str]) -> np.ndarray:
        """int64 ids of `grams`, 0 for those not in the lexicon."""
        return np.array(self._id_list(grams), dtype=np.int64)

    def _id_list(self, grams: Sequence[str]) -> list[int]:
        """`ids_of` as a list."""
        if not len(self._hashes) or not grams:
            return [0] * len(grams)
        if len(grams) > MANY_NGRAMS:
            hashes = np.array(_hashes(grams), dtype=np.int64)
            positions = self._hashes.searchsorted(hashes)
            found = self._hashes.take(positions, mode="clip") == hashes
            return np.where(found, self._ids.take(positions, mode="clip"), 0).tolist()
        # A few n-grams (a serving call): the comparison in Python, which saves three NumPy calls.
        wanted = _hashes(grams)
        positions = self._hashes.searchsorted(wanted)
        hits = self._hashes.take(positions, mode="clip").tolist()
        ids = self._ids.take(positions, mode="clip").tolist()
        return [gram_id if hit == key else 0 for key, hit, gram_id in zip(wanted, hits, ids, strict=True)]

    @classmethod
    def fit(cls, token_lists: Sequence[Sequence[str]], max_size: int, units: Units = "words",
            min_bigram_texts: int = 1, char_share: float = math.inf) -> Lexicon:
        """The `max_size` n-grams found in most texts, with scikit-learn's smoothed IDF; a bigram (and a character
        n-gram) only if `min_bigram_texts` texts or more have it. With ``words+chars``, the word n-grams first,
        then at most `char_share` character n-grams per word n-gram kept, within `max_size`."""
        joiner = "" if units == "chars" else " "
        unigrams: Counter[str] = Counter()
        bigrams: Counter[str] = Counter()
        chars: Counter[str] = Counter()
        for tokens in token_lists:
            unigrams.update(set(tokens))
            bigrams.update({f"{a}{joiner}{b}" for a, b in pairwise(tokens)})
            if units == "words+chars":
                chars.update(set(char_ngrams(tokens)))

        def most_frequent(counts: list[tuple[str, int]], size: int) -> list[tuple[str, int]]:
            # Most frequent first; ties in a fixed (alphabetical) order so training is reproducible.
            return sorted(counts, key=lambda item: (-item[1], item[0]))[:max(0, size)]

        kept = most_frequent([*unigrams.items(), *((g, n) for g, n in bigrams.items() if n >= min_bigram_texts)],
                             max_size)
        room = max_size - len(kept)
        kept += most_frequent([(g, n) for g, n in chars.items() if n >= min_bigram_texts],
                              room if math.isinf(char_share) else min(int(char_share * len(kept)), room))
        n = len(token_lists)
        idf = np.array([math.log((1 + n) / (1 + df)) + 1.0 for _, df in kept], dtype=np.float32)
        return cls([gram for gram, _ in kept], idf, units)

    def _blocks(self, tokens: Sequence[str]) -> list[list[str]]:
        """A text's n-grams in their weighting blocks: the word (or character) uni- and bigrams, then, with
        ``words+chars``, the character n-grams within words."""
        grams = ngrams(tokens, self.joiner)
        return [grams, char_ngrams(tokens)] if self.char_ngrams else [grams]

    def encode(self, token_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Ids int64 [n, L] and TF-IDF weights float32 [n, L] of each text's known n-grams (0-padded)."""
        blocks_per_text = [self._blocks(tokens) for tokens in token_lists]
        # One lookup for the whole batch, then each block's ids (0: not in the lexicon) in first-seen order.
        flat = self._id_list([gram for blocks in blocks_per_text for grams in blocks for gram in grams])
        counts_per_block: list[Counter[int]] = []
        start = 0
        for blocks in blocks_per_text:
            for grams in blocks:
                counts_per_block.append(Counter(filter(None, flat[start : start + len(grams)])))
                start += len(grams)
        known = [gram_id - 1 for counts in counts_per_block for gram_id in counts]
        idf = self.idf[known].astype(np.float64)
        idf_list = idf.tolist()
        ids: list[int] = []
        weights: list[float] = []
        per_text = 2 if self.char_ngrams else 1
        for block, counts in enumerate(counts_per_block):
            position, count = len(ids), len(counts)
            ids.extend(counts)
            # In float64, rounded once to float32. A block of few n-grams (a serving call) takes plain Python:
            # NumPy costs about a microsecond a call on arrays this small. Which way a block goes depends on
            # that block alone, so a text gets the same weights alone and in any batch.
            if count > (MANY_CHAR_NGRAMS if block % per_text else MANY_NGRAMS):
                tf = np.fromiter(counts.values(), dtype=np.float64, count=count)
                weights.extend(many_weights(tf, idf[position : position + count]).tolist())
            else:
                text_idf = idf_list[position : position + count]
                block_weights = [(1.0 + math.log(tf)) * w for tf, w in zip(counts.values(), text_idf, strict=True)]
                # A plain running sum: the same on every Python (3.12's sum() compensates) and in C.
                square = 0.0
                for w in block_weights:
                    square += w * w
                norm = math.sqrt(square)
                weights.extend(w / norm for w in block_weights)
        lengths = [sum(len(counts) for counts in counts_per_block[t * per_text : (t + 1) * per_text])
                   for t in range(len(blocks_per_text))]
        width = max(1, max(lengths, default=1))
        if len(lengths) == 1 and lengths[0] == width:  # the lone text of a serving call: no padding to place
            return np.array([ids], dtype=np.int64), np.array([weights], dtype=np.float32)
        id_array, weight_array = pad(np.array(lengths, dtype=np.int64), (ids, np.int64), (weights, np.float32))
        return id_array, weight_array
