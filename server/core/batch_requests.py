"""The requests a batcher holds: a call's texts split into chunks, and predictions split back into calls.

Splitting and merging only; which chunks run together is `batch_policy`'s decision, and running
them is `batching`'s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from tlserve.core.scorer import Prediction


@dataclass
class Chunk:
    """Up to a batch's worth of one call's texts, with the future its rows are delivered to."""

    texts: list[str]
    chars: int
    future: asyncio.Future[Prediction]
    deadline: float | None  # loop.time() after which the work is worthless
    enqueued: float = field(default_factory=time.perf_counter)
    traced: bool = False  # its call is traced (the batch then gets a span)
    taken: bool = False  # left the queue for a batch
    dropped: bool = False  # its caller went away while it was queued: its texts no longer count


def split(texts: list[str], max_texts: int, max_chars: int, deadline: float | None,
          loop: asyncio.AbstractEventLoop) -> list[Chunk]:
    """Chunks of at most `max_texts` texts and `max_chars` characters (at least one text each), in order."""
    chunks: list[Chunk] = []
    start, chars = 0, 0
    for i, text in enumerate(texts):
        size = len(text)
        if i > start and (i - start >= max_texts or chars + size > max_chars):
            chunks.append(Chunk(texts[start:i], chars, loop.create_future(), deadline))
            start, chars = i, 0
        chars += size
    chunks.append(Chunk(texts[start:], chars, loop.create_future(), deadline))
    return chunks


def merge(parts: list[Prediction]) -> Prediction:
    """One call's prediction from the predictions of its chunks (two or more), rows in order."""
    return Prediction(
        np.concatenate([p.probabilities for p in parts]),
        np.concatenate([p.token_counts for p in parts]),
        np.concatenate([p.oov_fractions for p in parts]),
        sum(p.encode_seconds for p in parts),
        sum(p.inference_seconds for p in parts),
        parts[0].started,
        tuple(span for p in parts for span in p.batch_spans),
        tuple(stats for p in parts for stats in p.batches),
    )


def deliver(batch: list[Chunk], prediction: Prediction, stats: object) -> None:
    """Each chunk of a batch gets its own rows of the batch's prediction; the first chunk still waiting also
    carries the batch's `stats`, so they are counted once."""
    row = 0
    counted = False
    for chunk in batch:
        n = len(chunk.texts)
        if not chunk.future.done():
            chunk.future.set_result(Prediction(
                prediction.probabilities[row : row + n],
                prediction.token_counts[row : row + n],
                prediction.oov_fractions[row : row + n],
                prediction.encode_seconds,
                prediction.inference_seconds,
                prediction.started,
                prediction.batch_spans,
                () if counted else (stats,),
            ))
            counted = True
        row += n
