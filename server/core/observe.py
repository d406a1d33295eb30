"""Observation of calls and batches, the same for every front end: counts, latencies, statistics.

The data plane reports each call once it is over (`call_finished`), with the batches that
computed it; the updates are queued (`metrics.DEFERRED`) and applied off the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tlserve.core.scorer import Prediction
from tlserve.server.core import metrics, tracing
from tlserve.server.core.batching import BatchStats
from tlserve.server.core.errors import ServingError
from tlserve.server.core.routing import RoutingTable

OK = "OK"
CANCELLED = "CANCELLED"
UNKNOWN = "UNKNOWN"


def call_finished(model: str, version: int, method: str, error: BaseException | None, started: float,
                  respond_started: float, ended: float, prediction: Prediction | None, texts: int, span: Any) -> None:
    """Records one call once it is over: its count by status code and its latency, the time its answer took to
    encode, the batches that computed it (each batch is reported with the first call it answered), and its
    trace's stages. One entry per call; the metric updates are queued (`metrics.DEFERRED`)."""
    if error is None:
        code = OK
    elif isinstance(error, ServingError):
        code = error.code.value
    elif isinstance(error, asyncio.CancelledError):
        code = CANCELLED
    else:
        code = UNKNOWN
    batches = prediction.batches if prediction is not None else ()
    metrics.DEFERRED.add(_apply_call, model, version, method, code, ended - started,
                         ended - respond_started if prediction is not None else None, batches)
    if span is not None:
        if prediction is not None:
            tracing.call_stages(span, started, prediction, respond_started, ended, version, texts)
        tracing.end_call(span, code, ended)


def explained(model: str, texts: int, seconds: float) -> None:
    """Records a call's explanations: the texts explained and the time they took (queued, as every update)."""
    metrics.DEFERRED.add(_apply_explained, model, texts, seconds)


def _apply_explained(aggregate: metrics.Aggregate, model: str, texts: int, seconds: float) -> None:
    children = metrics.for_model(model)
    aggregate.inc(children.explained, texts)
    aggregate.observe(children.explain, seconds)


def _apply_call(aggregate: metrics.Aggregate, model: str, version: int, method: str, code: str, seconds: float,
                respond_seconds: float | None, batches: tuple[BatchStats, ...]) -> None:
    aggregate.inc(metrics.request_counter(model, str(version or "latest"), method, code))
    aggregate.observe(metrics.request_latency(model, method), seconds)
    if respond_seconds is not None:
        aggregate.observe(metrics.for_model(model).respond, respond_seconds)
    for stats in batches:
        _apply_batch_stats(aggregate, model, version, stats)


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
                totals[served.name] = totals.get(served.name, 0) + served.batcher.queue.texts
        for name in self._last.keys() - totals.keys():
            totals[name] = 0  # unloaded: its queue is gone
        for name, total in totals.items():
            if self._last.get(name) != total:
                metrics.QUEUED_TEXTS.labels(name).set(total)
                self._last[name] = total
