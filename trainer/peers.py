"""The peers tlserve is compared with, each on its own natural input and with its own tuning.

- TF-IDF + logistic regression (scikit-learn): the raw texts with scikit-learn's own
  tokenisation (word uni- and bigrams; character 1-3-grams for Chinese, where scikit-learn's
  word pattern would take a whole sentence as one word), no token cap, C chosen by 3-fold
  cross-validation on the training labels.
- Word and character n-gram TF-IDF + logistic regression, the standard strong linear baseline:
  word uni- and bigrams beside character 2-5-grams within word boundaries (`char_wb`), or for
  Chinese, character 1-3-grams beside jieba's words and their bigrams; C chosen by 5-fold
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


WORD_CHAR_C = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


def _word_char_vectorizer(chinese: bool) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    if chinese:
        import jieba

        jieba.setLogLevel(60)
        words = TfidfVectorizer(tokenizer=jieba.lcut, token_pattern=None, lowercase=True, ngram_range=(1, 2),
                                sublinear_tf=True)
        chars = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    else:
        words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
        chars = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
    return FeatureUnion([("words", words), ("chars", chars)])


def tfidf_word_char(splits: Splits, labels: list[str], chinese: bool) -> PeerResult:
    """Word + character n-gram TF-IDF + logistic regression; C by 5-fold CV on the training labels.

    The folds' features are computed once per fold (each fold's vectorizer fitted on its own training part),
    and the grid's Cs are fitted on them in increasing order, each from the previous solution (as
    scikit-learn's `LogisticRegressionCV` walks its path): the same search as a grid over the pipeline,
    without vectorizing each fold once per C or starting each weakly regularised fit from zero.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    started = time.perf_counter()
    texts, names = list(splits.train.texts), np.array(splits.train.labels)
    smallest = int(np.unique(names, return_counts=True)[1].min())
    folds = StratifiedKFold(n_splits=max(2, min(5, smallest)), shuffle=True, random_state=0)
    hits = np.zeros(len(WORD_CHAR_C))
    for train_rows, held_rows in folds.split(texts, names):
        vectorizer = _word_char_vectorizer(chinese)
        train_x = vectorizer.fit_transform([texts[i] for i in train_rows])
        held_x = vectorizer.transform([texts[i] for i in held_rows])
        model = LogisticRegression(max_iter=3000, warm_start=True)
        for j, c in enumerate(WORD_CHAR_C):
            model.set_params(C=c).fit(train_x, names[train_rows])
            hits[j] += float(np.sum(model.predict(held_x) == names[held_rows]))
    best_c = WORD_CHAR_C[int(np.argmax(hits))]  # ties: the smaller C, the stronger regularisation
    vectorizer = _word_char_vectorizer(chinese)
    model = LogisticRegression(C=best_c, max_iter=3000).fit(vectorizer.fit_transform(texts), names)
    probabilities = np.zeros((len(splits.test), len(labels)), dtype=np.float64)
    probabilities[:, _label_index(labels, list(model.classes_))] = model.predict_proba(
        vectorizer.transform(splits.test.texts))
    return PeerResult(probabilities, time.perf_counter() - started,
                      {"C": best_c, "cv_accuracy": [round(float(h) / len(texts), 4) for h in hits],
                       "features": len(model.coef_[0])})


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
