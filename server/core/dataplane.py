"""The data plane: request limits, routing to a served version, batching, the answer.

Protocol-free: front ends pass texts and a model reference and get back an `Answer`
(plain Python and NumPy) or a `ServingError`, which each maps to its own status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tlserve.scorer import Prediction, Scorer
from tlserve.server.core import tracing
from tlserve.server.core.batching import DeadlineExceeded, QueueFull, ShuttingDown
from tlserve.server.core.errors import ErrorCode, ServingError
from tlserve.server.core.payload_log import PayloadLog
from tlserve.server.core.routing import ModelNotFound, RoutingTable, ServedVersion
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"


@dataclass(frozen=True)
class Answer:
    """The prediction for a request's texts and the version that made it."""

    scorer: Scorer
    """The version that answered: its name, version number and labels."""
    prediction: Prediction
    """Probabilities (one row per text, one column per label) and token statistics."""


# Texts turned into Python strings per loop turn: a front end's repeated field of 1,024 texts
# of 16 KB takes ~8 ms to read whole, during which a small call would wait.
_MATERIALIZE_STEP = 64


async def _materialize(texts: Sequence[str]) -> list[str]:
    """The texts as a list of str, read a slice per loop turn when there are many."""
    if isinstance(texts, list):
        return texts
    if len(texts) <= _MATERIALIZE_STEP:
        return list(texts)
    out: list[str] = []
    for start in range(0, len(texts), _MATERIALIZE_STEP):
        out.extend(texts[start : start + _MATERIALIZE_STEP])
        await asyncio.sleep(0)
    return out


class DataPlane:
    """Classifies texts with the served versions through one batcher per version."""

    def __init__(self, table: RoutingTable, settings: ServerSettings, payload_log: PayloadLog | None = None) -> None:
        self.table = table
        self.settings = settings
        self.payload_log = payload_log
        """Sampled calls written as JSON lines (`tlserve.server.core.payload_log`), or None."""
        self.ready = False
        """Set once the first repository scan is done."""
        self.draining = False
        """Set at shutdown: calls in flight finish, but the server no longer reports ready."""

    def served(self, name: str, version: int = 0) -> ServedVersion:
        """The version that answers `name` at `version` (0: the newest)."""
        if not self.ready:
            raise ServingError(ErrorCode.UNAVAILABLE, "the server is still loading its models; retry")
        try:
            served = self.table.get(name, version)
        except ModelNotFound as exc:
            raise ServingError(ErrorCode.NOT_FOUND, str(exc)) from None
        if served.held is not None:
            raise ServingError(ErrorCode.UNAVAILABLE, f"model {served.name!r} version {served.version} is not "
                                                      f"serving: {served.held}")
        return served

    def check_count(self, count: int, what: str = "texts") -> None:
        """Refuses a request of `count` texts over the limit: front ends call it before reading the texts."""
        limit = self.settings.max_texts_per_request
        if count > limit:
            raise ServingError(ErrorCode.INVALID_ARGUMENT,
                               f"{what} holds {count} texts; the limit is max_texts_per_request={limit} (tlserve's "
                               "clients split long lists themselves)")

    def check_texts(self, texts: Sequence[str]) -> None:
        if not texts:
            raise ServingError(ErrorCode.INVALID_ARGUMENT, "texts is empty: send at least one text")
        self.check_count(len(texts))
        byte_limit = self.settings.max_text_bytes
        for i, text in enumerate(texts):
            # len(str) <= bytes <= 4 * len(str), and an ASCII text's bytes are its length
            # (isascii() reads a flag): encode only when neither settles it.
            size = len(text)
            if size > byte_limit or (size * 4 > byte_limit and not text.isascii()
                                     and len(text.encode("utf-8")) > byte_limit):
                raise ServingError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"texts[{i}] has {len(text.encode('utf-8'))} UTF-8 bytes; the limit is "
                    f"max_text_bytes={byte_limit}",
                )

    async def predict(self, name: str, version: int, texts: Sequence[str], deadline: float | None,
                      flow: object | None = None) -> Answer:
        """Checks, batches and scores `texts` with `name` at `version` (0: newest).

        `deadline` is the event loop's time after which the work is worthless; requests with the
        same `flow` (a stream's) take one turn together in the batcher. Raises ServingError with
        the code of what went wrong.
        """
        served = self.served(name, version)
        if len(texts) > self.settings.max_texts_per_request:
            self.check_texts(texts)  # refused before any text is read
        if not served.batcher.has_room(len(texts)):
            # Refused before its texts become strings: callers retrying large requests against a full
            # queue would otherwise keep the event loop busy reading texts it then drops.
            raise ServingError(ErrorCode.RESOURCE_EXHAUSTED,
                               f"queue of model {served.name!r} holds {served.batcher.queued_texts} texts; "
                               f"{len(texts)} more would pass max_queue_size={served.batcher.max_queue_size}")
        texts = await _materialize(texts)
        self.check_texts(texts)
        try:
            prediction = await served.batcher.submit(texts, deadline, flow)
        except QueueFull as exc:
            raise ServingError(ErrorCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except DeadlineExceeded as exc:
            raise ServingError(ErrorCode.DEADLINE_EXCEEDED, str(exc)) from None
        except ShuttingDown as exc:
            raise ServingError(ErrorCode.UNAVAILABLE, str(exc)) from None
        except ServingError:
            raise
        except Exception as exc:  # a model that fails at inference: this call fails, serving goes on
            raise ServingError(ErrorCode.INTERNAL, f"model {served.name!r} version {served.version} failed: "
                                                   f"{type(exc).__name__}: {exc}") from exc
        if self.payload_log is not None:
            self.payload_log.offer(served.name, served.version, served.scorer.labels, texts, prediction.probabilities,
                                   prediction.token_counts, prediction.oov_fractions, tracing.current_trace_id())
        return Answer(served.scorer, prediction)

    def model_label(self, name: str) -> str:
        """`name` for metrics if it is served, else "unknown": clients cannot mint label values."""
        return name if name in self.table else UNKNOWN_MODEL
