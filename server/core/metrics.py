"""Prometheus metrics of the server, served over HTTP.

With several worker processes, prometheus_client's multiprocess mode is used: each
worker writes its samples to files under ``PROMETHEUS_MULTIPROC_DIR`` and the parent
process serves the sum on the metrics port, so one scrape sees the whole server.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

_LOGGER = logging.getLogger(__name__)


class Aggregate:
    """Counter increments and histogram observations summed per labelled child, then applied.

    Applying n observations of one histogram child costs one bucket search each in
    Python and one locked add per touched bucket, instead of n full `observe` calls.
    It writes the child's `_sum` and `_buckets` values, attributes prometheus_client has
    kept since its first releases (tests/server/core/test_metrics_deferred.py compares the exposition
    with `observe`'s, so an upgrade that changes them fails there).
    """

    def __init__(self) -> None:
        self.increments: dict[Any, float] = {}
        self.observations: dict[Any, list[float]] = {}

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self.increments[child] = self.increments.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        values = self.observations.get(child)
        if values is None:
            self.observations[child] = [value]
        else:
            values.append(value)

    def apply(self) -> None:
        for child, amount in self.increments.items():
            child.inc(amount)
        for child, values in self.observations.items():
            bounds = child._upper_bounds
            per_bucket = [0] * len(bounds)
            for value in values:
                per_bucket[bisect.bisect_left(bounds, value)] += 1  # the first bound >= value
            child._sum.inc(sum(values))
            for bucket, count in zip(child._buckets, per_bucket, strict=True):
                if count:
                    bucket.inc(count)


class DeferredUpdates:
    """Metric updates of the hot path, applied off it and in bulk.

    A call's dozen counter and histogram updates cost prometheus_client a lock and a few
    Python calls each: about 4 % of a lone caller's latency here. So calls queue them (a
    list append of the function that makes them) and they are applied, summed per metric
    child (`Aggregate`), when the event loop would otherwise wait for work
    (`tlserve.server.core.loop_idle`), when a scrape of this process comes in, or once `limit`
    are pending (a saturated loop never idles).
    """

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit
        self._pending: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        # The scrape thread flushes too: the lock keeps an update from landing in a list
        # that is being applied (and so from being lost).
        self._lock = threading.Lock()

    def add(self, update: Callable[..., None], *args: Any) -> None:
        """Queues `update(aggregate, *args)`."""
        with self._lock:
            self._pending.append((update, args))
            full = len(self._pending) >= self.limit
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        aggregate = Aggregate()
        for update, args in pending:
            update(aggregate, *args)
        aggregate.apply()


def observe(aggregate: Aggregate, child: Any, value: float) -> None:
    """An update for `DeferredUpdates.add`: one histogram observation."""
    aggregate.observe(child, value)


def count(aggregate: Aggregate, child: Any, amount: float) -> None:
    """An update for `DeferredUpdates.add`: a counter increment."""
    aggregate.inc(child, amount)


DEFERRED = DeferredUpdates()


class _FlushBeforeScrape:
    """Registered before every metric, so a scrape of this process sees every call so far."""

    def collect(self) -> Iterator[Metric]:
        DEFERRED.flush()
        return iter(())


REGISTRY.register(_FlushBeforeScrape())

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_FRACTION_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)

REQUESTS = Counter(
    "tlserve_requests", "Classify calls by model, version, method and gRPC status code",
    ["model", "version", "method", "code"],
)
TEXTS = Counter("tlserve_texts", "Texts classified", ["model", "version"])
LATENCY = Histogram(
    "tlserve_request_seconds", "Time from receiving a Classify call to its answer", ["model", "method"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("tlserve_batch_size", "Texts per inference batch", ["model"], buckets=_BATCH_BUCKETS)
QUEUE_SECONDS = Histogram(
    "tlserve_queue_seconds", "Time a request's texts waited for their batch", ["model"], buckets=_LATENCY_BUCKETS
)
STAGE_SECONDS = Histogram(
    "tlserve_stage_seconds", "Time per batch or call in each stage: encode (preprocessing and pooling), "
    "inference, respond (building the response message), explain (a call's explanations, when asked for)",
    ["model", "stage"], buckets=_LATENCY_BUCKETS,
)
EXPLAINED = Counter("tlserve_explained_texts", "Texts answered with an explanation (ClassifyRequest.explain)",
                    ["model"])
OOV_FRACTION = Histogram(
    "tlserve_oov_fraction", "Share of a text's tokens not in the vocabulary", ["model"], buckets=_FRACTION_BUCKETS
)
TOKENS = Counter("tlserve_tokens", "Tokens seen, and how many were out of vocabulary", ["model", "kind"])
QUEUED_TEXTS = Gauge(
    "tlserve_queued_texts", "Texts waiting in each model's queue (sampled when the event loop idles)", ["model"],
    multiprocess_mode="livesum",
)
PAYLOAD_LINES = Counter("tlserve_payload_log_lines", "Lines written to the payload log (one per sampled text)")
PAYLOAD_DROPPED = Counter(
    "tlserve_payload_log_dropped", "Payload log lines dropped: its queue was full, or the file could not be written",
    ["reason"],
)
ENCODER = Gauge(
    "tlserve_model_encoder", "1 for each served version, labelled with the encoder that makes its features: "
    "native (compiled) or python", ["model", "version", "encoder"], multiprocess_mode="max",
)
MODELS_LOADED = Gauge("tlserve_models_loaded", "Model versions loaded and serving", multiprocess_mode="max")
LOAD_FAILURES = Counter("tlserve_model_load_failures", "Model versions refused at load", ["reason"])
STORE_BROKEN = Gauge(
    "tlserve_store_broken", "1 while a vector store's files in the repository no longer match its fingerprint "
    "(the models on it are NOT_SERVING), else 0", ["store"], multiprocess_mode="max",
)


# Resolving a labelled child takes a lock and a dict lookup per call; the hot path does it
# a dozen times per request, so children are looked up once per label combination.
# Model labels come only from served models (unknown names are counted as "unknown"), so
# the caches stay small.


@functools.lru_cache(maxsize=4096)
def request_counter(model: str, version: str, method: str, code: str) -> Any:
    return REQUESTS.labels(model, version, method, code)


@functools.lru_cache(maxsize=1024)
def request_latency(model: str, method: str) -> Any:
    return LATENCY.labels(model, method)


@functools.lru_cache(maxsize=1024)
def texts_counter(model: str, version: str) -> Any:
    return TEXTS.labels(model, version)


class ModelMetrics:
    """The children of one model's per-model metrics, resolved once."""

    def __init__(self, model: str) -> None:
        self.batch_size = BATCH_SIZE.labels(model)
        self.encode = STAGE_SECONDS.labels(model, "encode")
        self.inference = STAGE_SECONDS.labels(model, "inference")
        self.respond = STAGE_SECONDS.labels(model, "respond")
        self.explain = STAGE_SECONDS.labels(model, "explain")
        self.explained = EXPLAINED.labels(model)
        self.queue = QUEUE_SECONDS.labels(model)
        self.oov_fraction = OOV_FRACTION.labels(model)
        self.tokens_all = TOKENS.labels(model, "all")
        self.tokens_oov = TOKENS.labels(model, "oov")


@functools.lru_cache(maxsize=1024)
def for_model(model: str) -> ModelMetrics:
    return ModelMetrics(model)


def mark_worker_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)
