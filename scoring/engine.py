"""The local engine: one `Scorer` per worker process, the vector store memory-mapped once per machine.

Workers are started with "spawn" (onnxruntime sessions and threads do not survive a fork)
and each opens the model version once; the store's pages are the page cache's, shared by
every worker. Batches go out in order and come back in order (`imap`), so the output keeps
the input's row order.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCORER = None


@dataclass
class ScoredBatch:
    """Top-k label indices and probabilities per text, with the token statistics the server reports."""

    indices: np.ndarray
    probabilities: np.ndarray
    token_counts: np.ndarray
    oov_fractions: np.ndarray


def _open(version_folder: str, repository: str) -> None:
    global _SCORER
    from tlserve.scorer import Scorer

    _SCORER = Scorer.open(Path(version_folder), Path(repository))


def _open_worker(version_folder: str, repository: str) -> None:
    # Ctrl-C reaches the whole process group: the job's process stops between batches and then
    # ends the pool (with SIGTERM, which ends a worker); a worker interrupted mid-batch would leave
    # that batch unanswered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _open(version_folder, repository)


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most probable labels of each row, most probable first (ties: lower index first)."""
    k = probabilities.shape[1] if k <= 0 else min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def label_names(labels: list[str], indices: np.ndarray) -> list[list[str]]:
    """The names of each row's top-k label indices."""
    return [[labels[i] for i in row] for row in indices.tolist()]


def _score(job: tuple[list[str], int]) -> ScoredBatch:
    texts, k = job
    assert _SCORER is not None
    prediction = _SCORER.predict(texts)
    indices, probabilities = top_k(prediction.probabilities, k)
    return ScoredBatch(indices, probabilities.astype(np.float32), prediction.token_counts, prediction.oov_fractions)


def score_batches(version_folder: Path, repository: Path, batches: Iterable[list[str]], k: int, workers: int
                  ) -> Iterator[ScoredBatch]:
    """Scores each batch of texts, in order, in `workers` processes (1: in this process)."""
    if workers <= 1:
        _open(str(version_folder), str(repository))
        for texts in batches:
            yield _score((texts, k))
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_open_worker, initargs=(str(version_folder), str(repository))) as pool:
        # At most a few batches per worker in flight: imap would read the whole input ahead.
        yield from _bounded_imap(pool, ((texts, k) for texts in batches), 2 * workers)


def _bounded_imap(pool: multiprocessing.pool.Pool, jobs: Iterator[tuple[list[str], int]], ahead: int
                  ) -> Iterator[ScoredBatch]:
    from collections import deque

    pending: deque[multiprocessing.pool.AsyncResult[ScoredBatch]] = deque()
    for job in jobs:
        pending.append(pool.apply_async(_score, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
