"""The peers tlserve is compared with, each on its own natural input and with its own tuning.

- TF-IDF + logistic regression (scikit-learn): the raw texts with scikit-learn's own
  tokenisation (word uni- and bigrams; character 1-3-grams for Chinese, where scikit-learn's
  word pattern would take a whole sentence as one word), no token cap, C chosen by 3-fold
  cross-validation on the training labels.
- fastText supervised, without and with the same pretrained vectors: the text prepared as
  fastText's own tutorial does (lower case, punctuation split off; Chinese segmented into
  words with jieba), learning rate, epochs and word n-grams chosen on the validation split.

Each returns probabilities for the test split (for accuracy and calibration) and the wall
time it took, tuning included.
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.vector_store import VectorStore
from tlserve.trainer.datasets import Splits

_LOGGER = logging.getLogger(__name__)

# fastText's tutorial: `sed -e "s/\([.\!?,'/()]\)/ \1 /g" | tr "[:upper:]" "[:lower:]"`.
_FASTTEXT_PUNCTUATION = re.compile(r"([.!?,'/()])")
_FASTTEXT_LABEL = "__label__"
# fastText 0.9.3 initialises its input matrix in ten blocks, one per training thread, in
# memory it does not clear: with fewer than ten threads the other blocks keep whatever the
# allocator held, and training stops with "Encountered NaN" at any learning rate. Twelve
# threads (the fastText command line's default) initialise every block.
FASTTEXT_THREADS = 12


@dataclass
class PeerResult:
    """One peer's test probabilities (columns in the order of `labels`) and what it chose."""

    probabilities: np.ndarray
    seconds: float
    chosen: dict[str, Any]


def _label_index(labels: list[str], names: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[name] for name in names])


def tfidf_logreg(splits: Splits, labels: list[str], chinese: bool) -> PeerResult:
    """TF-IDF + logistic regression on the raw texts; C by 3-fold CV on the training labels."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    started = time.perf_counter()
    if chinese:
        vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    else:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    pipeline = make_pipeline(vectorizer, LogisticRegression(max_iter=3000))
    smallest = int(np.unique(splits.train.labels, return_counts=True)[1].min())
    search = GridSearchCV(pipeline, {"logisticregression__C": [1.0, 10.0, 100.0]}, cv=max(2, min(3, smallest)))
    search.fit(splits.train.texts, splits.train.labels)
    model = search.best_estimator_
    probabilities = np.zeros((len(splits.test), len(labels)), dtype=np.float64)
    probabilities[:, _label_index(labels, list(model.classes_))] = model.predict_proba(splits.test.texts)
    return PeerResult(probabilities, time.perf_counter() - started,
                      {"C": search.best_params_["logisticregression__C"], "analyzer": vectorizer.analyzer})


def fasttext_text(text: str, chinese: bool) -> str:
    """A text as fastText's tutorial prepares it: one line, lower case, punctuation split off."""
    text = text.replace("\r", " ").replace("\n", " ").lower()
    if chinese:
        import jieba

        jieba.setLogLevel(60)
        return " ".join(word for word in jieba.lcut(text) if word.strip())
    return _FASTTEXT_PUNCTUATION.sub(r" \1 ", text)


def fasttext_peers(splits: Splits, labels: list[str], store: VectorStore, seed: int, chinese: bool
                   ) -> dict[str, PeerResult]:
    """fastText without and with the store's vectors ("fasttext", "fasttext_vectors"), in a fresh process.

    Word bigrams hash into fastText's default two million buckets (800 MB at 100 dimensions);
    a process of its own gives that memory back when it ends.
    """
    if importlib.util.find_spec("fasttext") is None:
        _LOGGER.warning("fasttext is not installed (extra 'compare'); skipping the fastText peers")
        return {}
    train, validation, test = ([fasttext_text(t, chinese) for t in part.texts]
                               for part in (splits.train, splits.validation, splits.test))
    with tempfile.TemporaryDirectory() as tmp:
        vec_file = Path(tmp) / "vectors.vec"
        _write_vec(vec_file, store, {w for text in train + validation + test for w in text.split()})
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_fasttext_worker, train, splits.train.labels, validation, splits.validation.labels,
                               test, labels, vec_file, store.dimension, seed).result()


def _write_vec(path: Path, store: VectorStore, words: set[str]) -> None:
    """The store's vectors of `words` (the task's words) in fastText's .vec format."""
    rows = store.index.lookup(sorted(words))
    rows = rows[rows >= 0]
    vocabulary = store.vocabulary
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{len(rows)} {store.dimension}\n")
        for row in rows:
            values = " ".join(f"{v:.6f}" for v in store.matrix[row])
            handle.write(f"{vocabulary[row]} {values}\n")


def write_fasttext_file(path: Path, texts: list[str], labels: list[str], seed: int) -> None:
    # Shuffled: fastText's SGD reads the file in order, and learns poorly from a file
    # grouped by class.
    order = np.random.default_rng(seed).permutation(len(texts))
    with open(path, "w", encoding="utf-8") as handle:
        for i in order:
            handle.write(f"{_FASTTEXT_LABEL}{labels[i].replace(' ', '_')} {texts[i]}\n")


def train_fasttext(train_file: Path, epoch: int, lr: float, seed: int, options: dict[str, Any]
                   ) -> tuple[Any, float]:
    """fastText supervised and the learning rate it trained at; (None, lr) if it diverges."""
    import fasttext

    for rate in (lr, lr / 4):  # a quarter of the rate: fastText's own remedy for a real divergence
        try:
            return fasttext.train_supervised(str(train_file), epoch=epoch, lr=rate, minCount=1,
                                             thread=FASTTEXT_THREADS, seed=seed, verbose=0, **options), rate
        except RuntimeError as exc:  # "Encountered NaN"
            _LOGGER.info("fastText epoch=%d lr=%g: %s", epoch, rate, exc)
    return None, lr


def fasttext_probabilities(model: Any, texts: list[str], labels: list[str]) -> np.ndarray:
    """Every label's probability per text, columns in the order of `labels`."""
    # model.predict() of fasttext 0.9.3 fails under NumPy 2 (np.array(copy=False)); the
    # binding underneath returns plain lists.
    column = {label.replace(" ", "_"): i for i, label in enumerate(labels)}
    names, scores = model.f.multilinePredict(texts, -1, 0.0, "strict")
    out = np.full((len(texts), len(labels)), 1.0 / len(labels))
    for row, (row_names, row_scores) in enumerate(zip(names, scores, strict=True)):
        if row_names:  # a text without known words gets no prediction: uniform
            out[row] = 0.0
            for name, score in zip(row_names, row_scores, strict=True):
                out[row, column[name[len(_FASTTEXT_LABEL):]]] = score
    return out


def _fasttext_worker(train: list[str], train_labels: list[str], validation: list[str], validation_labels: list[str],
                     test: list[str], labels: list[str], vec_file: Path, dim: int, seed: int
                     ) -> dict[str, PeerResult]:
    """Runs in the spawned process: a grid on validation, then test probabilities per peer."""
    variants: dict[str, dict[str, Any]] = {
        "fasttext": {},  # fastText's default dimension, 100
        "fasttext_vectors": {"dim": dim, "pretrainedVectors": str(vec_file)},
    }
    truth = _label_index(labels, validation_labels)
    out: dict[str, PeerResult] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        write_fasttext_file(train_file, train, train_labels, seed)
        for name, options in variants.items():
            started = time.perf_counter()
            best: tuple[float, dict[str, Any]] | None = None
            for epoch in (5, 25):
                for lr in (0.1, 0.5, 1.0):  # 0.5 to 1.0: fastText's tutorial rates
                    for ngrams in (1, 2):
                        grid = {"epoch": epoch, "lr": lr, "wordNgrams": ngrams}
                        model, _ = train_fasttext(train_file, epoch, lr, seed, {**options, "wordNgrams": ngrams})
                        if model is None:
                            continue
                        predicted = fasttext_probabilities(model, validation, labels).argmax(1)
                        accuracy = float(np.mean(predicted == truth))
                        if best is None or accuracy > best[0]:
                            best = (accuracy, grid)
            if best is None:
                _LOGGER.warning("fastText %s diverged at every setting; left out", name)
                continue
            chosen = best[1]
            model, rate = train_fasttext(train_file, chosen["epoch"], chosen["lr"], seed,
                                         {**options, "wordNgrams": chosen["wordNgrams"]})
            if model is None:
                continue
            out[name] = PeerResult(fasttext_probabilities(model, test, labels), time.perf_counter() - started,
                                   {**chosen, "lr": rate})
    return out
