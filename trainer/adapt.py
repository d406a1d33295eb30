"""`tlserve vectors adapt`: continue a store's vectors on the user's own unlabelled text (gensim word2vec).

Users usually have far more unlabelled in-domain text than labels. Word2vec (CBOW,
negative sampling) is set up on the corpus' vocabulary; every corpus word the store knows
starts from its pretrained vector, new words start small and random; training then moves
known words toward their in-domain use and gives new words vectors in the same space,
through the output layer they share. The new store holds every word of the old one (the
words the corpus never used keep their vectors) plus the corpus' new words, and is used
like any other store (`tlserve train --vectors`).

The corpus is tokenised by tlserve's own preprocessing (the tokens models will look up):
one text per line, as a plain UTF-8 file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlserve.core.errors import InputFileError
from tlserve.core.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.core.vector_store import StoreManifest, VectorStore, check_store_target, sha256_file, write_store

_LOGGER = logging.getLogger(__name__)


@dataclass
class AdaptConfig:
    """Settings of `tlserve vectors adapt`."""

    vectors: Path
    """The store to start from."""
    corpus: Path
    """Unlabelled in-domain text, UTF-8, one text per line."""
    out: Path
    """The new store's folder."""
    tokenizer: str = "latin"
    """Tokeniser of the corpus: "latin" or "jieba", as the models that will use the store."""
    epochs: int = 5
    """Passes over the corpus."""
    min_count: int = 3
    """Corpus words seen fewer times are left out (their vectors would be noise)."""
    window: int = 5
    """Word2vec context window."""
    learning_rate: float = 0.0025
    """Word2vec's starting learning rate (alpha), decaying linearly to 1/100 of it. A tenth of word2vec's
    usual 0.025: at 0.025 the pretrained geometry was lost (WordNet 1 %, frozen: 0.6996 -> 0.6704 over 3
    splits), at 0.0025 it is kept (0.6969); higher lets new words learn more and moves known ones more."""
    seed: int = 0
    """Seed of the initialisation of new words and of the sampling."""
    overwrite: bool = False
    """Replace an existing store at `out`."""


class _Sentences:
    """The corpus as token lists, read again on every pass (gensim iterates several times)."""

    def __init__(self, path: Path, preprocessor: Preprocessor) -> None:
        self.path = path
        self.preprocessor = preprocessor

    def __iter__(self) -> Iterator[list[str]]:
        with open(self.path, encoding="utf-8") as handle:  # checked to be UTF-8 before
            for line in handle:
                tokens = self.preprocessor.tokens(line)
                if tokens:
                    yield tokens


def _check_corpus(path: Path) -> None:
    if not path.is_file():
        raise InputFileError(path, "file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputFileError(path, f"not UTF-8 at byte {exc.start} of the line", number) from exc


def adapt_vectors(config: AdaptConfig) -> StoreManifest:
    """Writes the adapted store to `config.out` and returns its manifest."""
    from gensim.models import Word2Vec

    check_store_target(config.out, config.overwrite)
    _check_corpus(config.corpus)
    store = VectorStore(config.vectors)
    # The corpus is tokenised whole: adaptation wants every word of a long document.
    preprocessor = Preprocessor(PreprocessingConfig(case=store.manifest.case, tokenizer=config.tokenizer,  # type: ignore[arg-type]
                                                    max_tokens=100_000))
    sentences = _Sentences(config.corpus, preprocessor)
    model = Word2Vec(vector_size=store.dimension, window=config.window, min_count=config.min_count, sg=0,
                     negative=5, workers=2, seed=config.seed, alpha=config.learning_rate,
                     min_alpha=config.learning_rate / 100)
    model.build_vocab(corpus_iterable=sentences)
    corpus_words = list(model.wv.index_to_key)
    if not corpus_words:
        raise InputFileError(config.corpus, f"no word occurs {config.min_count} times (--min-count)")
    rows = store.index.lookup(corpus_words)
    known = rows >= 0
    model.wv.vectors[known] = np.asarray(store.matrix[rows[known]], dtype=np.float32)
    _LOGGER.info("corpus: %d words kept (min count %d), %d of them in the store, %d new; training %d epochs",
                 len(corpus_words), config.min_count, int(known.sum()), int((~known).sum()), config.epochs)
    model.train(corpus_iterable=sentences, total_examples=model.corpus_count, epochs=config.epochs)
    matrix = np.array(store.matrix, dtype=np.float32)
    trained = model.wv.vectors
    matrix[rows[known]] = trained[known]
    vocabulary = store.vocabulary
    words = vocabulary + [corpus_words[i] for i in np.flatnonzero(~known)]
    matrix = np.concatenate([matrix, trained[~known]]) if (~known).any() else matrix
    moved = np.linalg.norm(trained[known] - np.asarray(store.matrix[rows[known]]), axis=1)
    _LOGGER.info("known words moved by %.3f on average (their mean norm %.3f)", float(moved.mean()),
                 float(np.linalg.norm(trained[known], axis=1).mean()))
    source = f"{store.manifest.source_name} adapted on {config.corpus.name}"
    digest = f"{store.fingerprint}+{sha256_file(config.corpus)}"
    return write_store(config.out, words, matrix, case=store.manifest.case, source_name=source,
                       source_sha256=digest, overwrite=config.overwrite)
