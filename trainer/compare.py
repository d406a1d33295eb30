"""`tlserve train --compare`: peers and ablations on the same split, in the same run.

Systems (hyper-parameters of each chosen on the validation split; the test split is
scored once per system):

- the other tlserve transfer mode;
- each tlserve mode on random vectors of the store's shape (no transfer);
- TF-IDF over word uni- and bigrams + logistic regression (scikit-learn);
- fastText supervised: plain, with word bigrams, and with the same pretrained vectors
  (optional extra ``compare``; skipped with a note if fasttext is not installed);
- a learning curve: 1, 5, 10, 25, 50 and 100 % of the training labels, pretrained vs random.

Every system sees the same tokens (the model's own preprocessing), so differences come
from the models, not from tokenisation.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.preprocessing import PreprocessingConfig, Preprocessor
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.datasets import Splits, subsample
from tlserve.trainer.evaluation import Evaluation, evaluate
from tlserve.trainer.fitting import fit_model, predict, random_like
from tlserve.vector_store import VectorStore

_LOGGER = logging.getLogger(__name__)

CURVE_FRACTIONS = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)


def _scores(evaluation: Evaluation, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"accuracy": evaluation.accuracy, "macro_f1": evaluation.macro_f1, "seconds": round(seconds, 1), **extra}


def _tlserve(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], matrix: np.ndarray | None
             ) -> Evaluation:
    fitted = fit_model(config, splits, store, labels, matrix)
    probabilities, encoded = predict(fitted, splits.test.texts)
    return evaluate(splits.test.labels, probabilities, labels, encoded)


def _token_strings(preprocessor: Preprocessor, texts: list[str]) -> list[str]:
    return [" ".join(preprocessor.tokens(text)) for text in texts]


def _one_hot(true: list[str], predicted: list[str], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(predicted), len(labels)), dtype=np.float32)
    for row, label in enumerate(predicted):
        out[row, index[label]] = 1.0
    return out


def tfidf_logistic(splits: Splits, preprocessor: Preprocessor, labels: list[str]) -> tuple[Evaluation, dict]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, val, test = (_token_strings(preprocessor, s.texts) for s in (splits.train, splits.validation, splits.test))
    vectorizer = TfidfVectorizer(token_pattern=r"\S+", ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform(train)
    best: tuple[float, float] = (-1.0, 1.0)
    for c in (1.0, 10.0, 100.0):
        model = LogisticRegression(C=c, max_iter=2000)
        model.fit(x_train, splits.train.labels)
        accuracy = float(np.mean(model.predict(vectorizer.transform(val)) == np.array(splits.validation.labels)))
        best = max(best, (accuracy, c))
    model = LogisticRegression(C=best[1], max_iter=2000).fit(x_train, splits.train.labels)
    predicted = list(model.predict(vectorizer.transform(test)))
    return evaluate(splits.test.labels, _one_hot(splits.test.labels, predicted, labels), labels), {"C": best[1]}


def _write_fasttext(path: Path, texts: list[str], labels: list[str], seed: int) -> None:
    # Shuffled: fastText's SGD reads the file in order, and learns poorly from a file
    # grouped by class.
    order = np.random.default_rng(seed).permutation(len(texts))
    with open(path, "w", encoding="utf-8") as handle:
        for i in order:
            handle.write(f"__label__{labels[i].replace(' ', '_')} {texts[i]}\n")


def _fasttext_predict(model: Any, texts: list[str]) -> list[str]:
    # model.predict() of fasttext 0.9.3 fails under NumPy 2 (np.array(copy=False)); the
    # binding underneath returns plain lists. A text without known words gets no label:
    # it gets the most frequent training label, as a constant classifier would.
    labels, _ = model.f.multilinePredict(texts, 1, 0.0, "strict")
    fallback = model.get_labels()[0]  # fastText sorts labels by frequency
    return [(row[0] if row else fallback)[len("__label__"):] for row in labels]


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


# fastText 0.9.3 initialises its input matrix in ten blocks, one per training thread, in
# memory it does not clear: with fewer than ten threads the other blocks keep whatever the
# allocator held, and training stops with "Encountered NaN" at any learning rate. Twelve
# threads (the fastText command line's default) initialise every block.
_FASTTEXT_THREADS = 12


def _train_fasttext(train_file: Path, epoch: int, lr: float, seed: int, options: dict[str, Any]
                    ) -> tuple[Any, float]:
    """fastText supervised and the learning rate it trained at; (None, lr) if it diverges."""
    import fasttext

    for rate in (lr, lr / 4):  # a quarter of the rate: fastText's own remedy for a real divergence
        try:
            return fasttext.train_supervised(str(train_file), epoch=epoch, lr=rate, minCount=1,
                                             thread=_FASTTEXT_THREADS, seed=seed, verbose=0, **options), rate
        except RuntimeError as exc:  # "Encountered NaN"
            _LOGGER.info("fastText epoch=%d lr=%g: %s", epoch, rate, exc)
    return None, lr


def fasttext_variants(splits: Splits, preprocessor: Preprocessor, store: VectorStore, labels: list[str], seed: int
                      ) -> dict[str, dict[str, Any]]:
    """The three fastText peers, trained in a fresh process.

    The bigram peers hash into fastText's default two million buckets (800 MB at 100
    dimensions); a process of their own gives that memory back when it ends.
    """
    if importlib.util.find_spec("fasttext") is None:
        _LOGGER.warning("fasttext is not installed (extra 'compare'); skipping the fastText peers")
        return {}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    train, val, test = (_token_strings(preprocessor, s.texts) for s in (splits.train, splits.validation, splits.test))
    with tempfile.TemporaryDirectory() as tmp:
        vec_file = Path(tmp) / "vectors.vec"
        _write_vec(vec_file, store, {w for text in train + val + test for w in text.split()})
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            predictions = pool.submit(_fasttext_worker, train, splits.train.labels, val, splits.validation.labels,
                                      test, vec_file, store.dimension, seed).result()
    out: dict[str, dict[str, Any]] = {}
    for name, (predicted, seconds, chosen) in predictions.items():
        evaluation = evaluate(splits.test.labels, _one_hot(splits.test.labels, predicted, labels), labels)
        out[name] = _scores(evaluation, seconds, **chosen)
    return out


def _fasttext_worker(train: list[str], train_labels: list[str], val: list[str], val_labels: list[str],
                     test: list[str], vec_file: Path, dim: int, seed: int
                     ) -> dict[str, tuple[list[str], float, dict[str, Any]]]:
    """Runs in the spawned process: grid on validation, then test predictions per variant."""
    by_name = {label.replace(" ", "_"): label for label in set(train_labels)}
    variants: dict[str, dict[str, Any]] = {
        # fastText's default dimension (100) for the peers without vectors.
        "fasttext": {"wordNgrams": 1, "dim": 100},
        "fasttext_bigrams": {"wordNgrams": 2, "dim": 100},
        "fasttext_pretrained": {"wordNgrams": 2, "dim": dim, "pretrainedVectors": str(vec_file)},
    }
    out: dict[str, tuple[list[str], float, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        _write_fasttext(train_file, train, train_labels, seed)
        for name, options in variants.items():
            started = time.perf_counter()
            best: tuple[float, int, float] = (-1.0, 5, 0.1)
            for epoch in (5, 25):
                for lr in (0.1, 0.5, 1.0):  # 0.5 to 1.0: fastText's tutorial rates
                    model, _ = _train_fasttext(train_file, epoch, lr, seed, options)
                    if model is None:
                        continue
                    predicted = [by_name[label] for label in _fasttext_predict(model, val)]
                    accuracy = float(np.mean(np.array(predicted) == np.array(val_labels)))
                    best = max(best, (accuracy, epoch, lr))
            model, trained_lr = _train_fasttext(train_file, best[1], best[2], seed, options)
            if model is None:
                _LOGGER.warning("fastText %s diverged at every setting; left out", name)
                continue
            predicted = [by_name[label] for label in _fasttext_predict(model, test)]
            out[name] = (predicted, time.perf_counter() - started, {"epoch": best[1], "lr": trained_lr})
    return out


def learning_curve(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], random_matrix: np.ndarray
                   ) -> list[dict[str, Any]]:
    points = []
    for fraction in CURVE_FRACTIONS:
        train = splits.train.subset(subsample(splits.train.labels, fraction, config.seed))
        validation = splits.validation.subset(subsample(splits.validation.labels, fraction, config.seed))
        part = Splits(train, validation, splits.test)
        pretrained = _tlserve(config, part, store, labels, None)
        random = _tlserve(config, part, store, labels, random_matrix)
        points.append({"fraction": fraction, "examples": len(train), "pretrained": pretrained.accuracy,
                       "random": random.accuracy})
        _LOGGER.info("learning curve %.0f%%: pretrained %.4f, random %.4f", fraction * 100, pretrained.accuracy,
                     random.accuracy)
    return points


def run(config: TrainConfig, splits: Splits, store: VectorStore, labels: list[str], evaluation: Evaluation,
        curve: bool = True) -> dict[str, Any]:
    preprocessor = Preprocessor(PreprocessingConfig.from_dict(
        {"case": store.manifest.case, "tokenizer": config.tokenizer, "max_tokens": config.max_tokens}))
    systems: dict[str, dict[str, Any]] = {f"tlserve_{config.mode}": _scores(evaluation, 0.0)}
    other = "frozen" if config.mode == "finetune" else "finetune"
    started = time.perf_counter()
    systems[f"tlserve_{other}"] = _scores(_tlserve(replace(config, mode=other), splits, store, labels, None),
                                          time.perf_counter() - started)
    random_matrix = random_like(store, config.seed)
    for mode in (config.mode, other):  # no transfer: the same model of each mode on random vectors
        started = time.perf_counter()
        systems[f"random_vectors_{mode}"] = _scores(
            _tlserve(replace(config, mode=mode), splits, store, labels, random_matrix), time.perf_counter() - started)
    started = time.perf_counter()
    tfidf, chosen = tfidf_logistic(splits, preprocessor, labels)
    systems["tfidf_logreg"] = _scores(tfidf, time.perf_counter() - started, **chosen)
    systems.update(fasttext_variants(splits, preprocessor, store, labels, config.seed))
    tlserve_best = max(v["accuracy"] for k, v in systems.items() if k.startswith("tlserve_"))
    peers = {k: v["accuracy"] for k, v in systems.items() if k.startswith(("tfidf", "fasttext"))}
    result: dict[str, Any] = {
        "mode": config.mode,
        "systems": systems,
        "best_tlserve": tlserve_best,
        "best_peer": max(peers.values()) if peers else None,
        "best_peer_name": max(peers, key=lambda k: peers[k]) if peers else None,
        "train_examples": len(splits.train),
    }
    for name, scores in systems.items():
        _LOGGER.info("compare %-22s accuracy %.4f  macro-F1 %.4f", name, scores["accuracy"], scores["macro_f1"])
    if curve:
        result["learning_curve"] = learning_curve(config, splits, store, labels, random_matrix)
    return result
