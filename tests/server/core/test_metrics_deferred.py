"""Deferred, aggregated metric updates expose exactly what direct prometheus_client calls would."""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tlserve.server.core import metrics

BUCKETS = (0.0, 0.0002, 0.001, 0.5, 1.0, 2.5)


def _pair(name: str) -> tuple[CollectorRegistry, Histogram, Counter]:
    registry = CollectorRegistry()
    histogram = Histogram(f"{name}_seconds", "h", ["model"], buckets=BUCKETS, registry=registry)
    counter = Counter(f"{name}_calls", "c", ["model"], registry=registry)
    return registry, histogram, counter


def test_aggregate_exposes_what_observe_and_inc_expose() -> None:
    rng = np.random.default_rng(0)
    # Values on the bucket bounds (le is inclusive), below the first, above the last.
    values = [*BUCKETS, -1.0, 0.0, 7.5, *rng.exponential(0.01, size=500).tolist()]
    direct_registry, direct_histogram, direct_counter = _pair("x")
    bulk_registry, bulk_histogram, bulk_counter = _pair("x")
    aggregate = metrics.Aggregate()
    for i, value in enumerate(values):
        model = "a" if i % 3 else "b"
        direct_histogram.labels(model).observe(value)
        direct_counter.labels(model).inc(i % 4)
        aggregate.observe(bulk_histogram.labels(model), value)
        aggregate.inc(bulk_counter.labels(model), i % 4)
    aggregate.apply()

    def exposition(registry: CollectorRegistry) -> list[str]:  # without the creation timestamps
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert exposition(bulk_registry) == exposition(direct_registry)
    assert 'x_seconds_bucket{le="0.0",model="a"}' in "\n".join(exposition(bulk_registry))


def test_deferred_updates_apply_once_on_flush_and_on_scrape() -> None:
    registry, histogram, counter = _pair("y")
    deferred = metrics.DeferredUpdates(limit=1000)
    child = counter.labels("m")
    for _ in range(10):
        deferred.add(metrics.observe, histogram.labels("m"), 0.1)
        deferred.add(lambda aggregate, c: aggregate.inc(c, 2), child)
    assert registry.get_sample_value("y_calls_total", {"model": "m"}) == 0  # deferred
    deferred.flush()
    deferred.flush()  # nothing twice
    assert registry.get_sample_value("y_calls_total", {"model": "m"}) == 20
    assert registry.get_sample_value("y_seconds_count", {"model": "m"}) == 10

    # The server's own DEFERRED is flushed by a scrape of the default registry.
    metrics.DEFERRED.add(lambda aggregate, c: aggregate.inc(c, 5), child)
    generate_latest()
    assert registry.get_sample_value("y_calls_total", {"model": "m"}) == 25


def test_deferred_updates_reaching_the_limit_flush_and_threads_lose_nothing() -> None:
    registry, _, counter = _pair("z")
    deferred = metrics.DeferredUpdates(limit=64)
    child = counter.labels("m")

    def work() -> None:
        for _ in range(5000):
            deferred.add(lambda aggregate, c: aggregate.inc(c), child)

    def scrape() -> None:
        for _ in range(2000):
            deferred.flush()

    threads = [threading.Thread(target=work) for _ in range(3)] + [threading.Thread(target=scrape)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.get_sample_value("z_calls_total", {"model": "m"}) >= 15000 - 64  # the limit flushed
    deferred.flush()
    assert registry.get_sample_value("z_calls_total", {"model": "m"}) == 15000
