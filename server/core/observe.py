"""Observation of calls and batches, the same for every front end: counts, latencies, statistics.

Every front end wraps a call in `observe_call(...)`; the batcher reports each batch through
`record_batch`. Both queue their metric updates (`metrics.DEFERRED`), which are applied
off the hot path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from tlserve.scorer import Prediction
from tlserve.server.core import metrics, tracing
from tlserve.server.core.batching import BatchStats
from tlserve.server.core.errors import ServingError
from tlserve.server.core.routing import RoutingTable

OK = "OK"
CANCELLED = "CANCELLED"
UNKNOWN = "UNKNOWN"


class CallObserver:
    """Counts the call by status code and times it, whichever API it came through.

    A class rather than @contextlib.contextmanager: it runs on every call, and a plain
    __enter__/__exit__ costs a fraction of a generator-based one.
    """

    __slots__ = ("carrier", "method", "model", "span", "started", "version")

    def __init__(self, model: str, version: int, method: str,
                 carrier: Callable[[], Mapping[str, str]] | None = None) -> None:
        self.model = model
        self.version = version
        """Set by the call once it knows which version answered."""
        self.method = method
        self.carrier = carrier
        """The call's metadata or headers (read only when tracing is on: `traceparent`)."""
        self.span: Any = None
        self.started = 0.0

    def __enter__(self) -> CallObserver:
        self.started = time.perf_counter()
        if tracing.TRACER is not None:
            self.span = tracing.start_call(self.method, self.model, self.carrier, self.started)
        return self

    def responded(self, model: str, prediction: Prediction, texts: int, respond_started: float) -> None:
        """The answer is built: times the response (and lays out the call's trace)."""
        ended = time.perf_counter()
        metrics.DEFERRED.add(metrics.observe, metrics.for_model(model).respond, ended - respond_started)
        if self.span is not None:
            tracing.call_stages(self.span, self.started, prediction, respond_started, ended, self.version, texts)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if kind is None:
            code = OK
        elif isinstance(error, ServingError):
            code = error.code.value
        elif isinstance(error, asyncio.CancelledError):
            code = CANCELLED
        else:
            code = UNKNOWN
        ended = time.perf_counter()
        metrics.DEFERRED.add(_count_call, self.model, self.version, self.method, code, ended - self.started)
        if self.span is not None:
            tracing.end_call(self.span, code, ended)


def observe_call(model_label: str, version: int, method: str,
                 carrier: Callable[[], Mapping[str, str]] | None = None) -> CallObserver:
    """The observer of one call; `model_label` comes from `DataPlane.model_label` (served names only);
    `carrier` gives the call's metadata or headers, for a caller's trace context."""
    return CallObserver(model_label, version, method, carrier)


def _count_call(aggregate: metrics.Aggregate, model: str, version: int, method: str, code: str,
                seconds: float) -> None:
    aggregate.inc(metrics.request_counter(model, str(version or "latest"), method, code))
    aggregate.observe(metrics.request_latency(model, method), seconds)


def record_batch(model: str, version: int, stats: BatchStats) -> None:
    metrics.DEFERRED.add(_apply_batch_stats, model, version, stats)


def _apply_batch_stats(aggregate: metrics.Aggregate, model_name: str, version: int, stats: BatchStats) -> None:
    # Per batch rather than per call: under load one batch serves many calls.
    model = metrics.for_model(model_name)
    aggregate.observe(model.batch_size, stats.size)
    aggregate.observe(model.encode, stats.encode_seconds)
    aggregate.observe(model.inference, stats.inference_seconds)
    for seconds in stats.queue_seconds:
        aggregate.observe(model.queue, seconds)
    counts = stats.token_counts.tolist()
    fractions = stats.oov_fractions.tolist()
    aggregate.inc(model.tokens_all, sum(counts))
    aggregate.inc(model.tokens_oov, round(sum(f * c for f, c in zip(fractions, counts, strict=True))))
    for fraction, count in zip(fractions, counts, strict=True):
        if count:
            aggregate.observe(model.oov_fraction, fraction)
    aggregate.inc(metrics.texts_counter(model_name, str(version)), stats.size)


class QueueSampler:
    """Sets the queued-texts gauge of each model from its batchers; run when the event loop idles.

    Sampled rather than counted per call: the hot path pays nothing, and an idle loop (the
    moment a queue can be read in a steady state) is when it runs.
    """

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self._last: dict[str, int] = {}

    def __call__(self) -> None:
        totals: dict[str, int] = {}
        for versions in self.table.models.values():
            for served in versions.values():
                totals[served.name] = totals.get(served.name, 0) + served.batcher.queued_texts
        for name in self._last.keys() - totals.keys():
            totals[name] = 0  # unloaded: its queue is gone
        for name, total in totals.items():
            if self._last.get(name) != total:
                metrics.QUEUED_TEXTS.labels(name).set(total)
                self._last[name] = total
