"""The local engine: one `Scorer` per worker process, the vector store memory-mapped once per machine.

Workers are started with "spawn" (onnxruntime sessions and threads do not survive a fork)
and each opens the model version once; the store's pages are the page cache's, shared by
every worker. Batches go out in order and come back in order (`imap`), so the output keeps
the input's row order; inside a batch, texts run sorted by length in runs of at most
`MAX_BATCH_CHARS` characters (`predict_by_length`), as the server bounds its batches.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlserve.core.ranking import top
from tlserve.core.scorer import Scorer

_SCORER: Scorer | None = None
# Characters per inference run, as the server's --max-batch-chars.
MAX_BATCH_CHARS = 65_536


@dataclass
class TopLabels:
    """The top-k label indices and probabilities of each text of a batch, with the token statistics the server
    reports."""

    indices: np.ndarray
    probabilities: np.ndarray
    token_counts: np.ndarray
    oov_fractions: np.ndarray


def _open(version_folder: str, repository: str) -> None:
    global _SCORER
    _SCORER = Scorer.open(Path(version_folder), Path(repository))


def _open_worker(version_folder: str, repository: str) -> None:
    # Ctrl-C reaches the whole process group: the job's process stops between batches and then
    # ends the pool (with SIGTERM, which ends a worker); a worker interrupted mid-batch would leave
    # that batch unanswered.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _open(version_folder, repository)


def predict_by_length(scorer: Scorer, texts: list[str], max_chars: int = MAX_BATCH_CHARS
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities, token counts and out-of-vocabulary shares of `texts`, in their order, computed in runs of
    texts of similar length of at most `max_chars` characters (as the server bounds its batches).

    A batch's graph inputs are as wide as its longest text: on texts of mixed lengths, one long text
    makes every short one pay for its width. Sorted by length, each run pays for texts like its own."""
    n = len(texts)
    order = sorted(range(n), key=lambda i: len(texts[i]))
    probabilities: np.ndarray | None = None
    counts = np.zeros(n, dtype=np.int32)
    fractions = np.zeros(n, dtype=np.float32)
    start = 0
    while start < n:
        end, chars = start, 0
        while end < n and (end == start or chars + len(texts[order[end]]) <= max_chars):
            chars += len(texts[order[end]])
            end += 1
        run = order[start:end]
        prediction = scorer.predict([texts[i] for i in run])
        if probabilities is None:
            probabilities = np.zeros((n, prediction.probabilities.shape[1]), dtype=np.float32)
        probabilities[run] = prediction.probabilities
        counts[run] = prediction.token_counts
        fractions[run] = prediction.oov_fractions
        start = end
    assert probabilities is not None or n == 0
    return (probabilities if probabilities is not None else np.zeros((0, 0), np.float32)), counts, fractions


def _score(job: tuple[list[str], int]) -> TopLabels:
    texts, k = job
    assert _SCORER is not None
    probabilities, counts, fractions = predict_by_length(_SCORER, texts)
    indices, values = top(probabilities, k)
    return TopLabels(indices, values.astype(np.float32), counts, fractions)


def score_batches(version_folder: Path, repository: Path, batches: Iterable[list[str]], k: int, workers: int
                  ) -> Iterator[TopLabels]:
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
                  ) -> Iterator[TopLabels]:
    from collections import deque

    pending: deque[multiprocessing.pool.AsyncResult[TopLabels]] = deque()
    for job in jobs:
        pending.append(pool.apply_async(_score, (job,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()
