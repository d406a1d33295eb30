"""A snapshot of the server's own metrics, per model, for the status page.

Read from the Prometheus registry the metrics port serves (with several workers, the sum of
their files, as a scrape sees it), so the page and a scrape never disagree. Counts and
histograms are cumulative; the page takes differences between two snapshots for live rates
and window percentiles.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from tlserve.server.core import metrics


def _registry() -> Any:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


# Statuses that say the caller's request was wrong (or given up), not that the server failed it: the
# 4xx of HTTP, and a caller's cancellation.
CALLER_ERRORS = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "CANCELLED", "RESOURCE_EXHAUSTED"})


def snapshot() -> dict[str, Any]:
    """Per model: calls, calls the server failed (its errors: INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED, ...)
    and calls it refused as the caller's mistake (INVALID_ARGUMENT, NOT_FOUND, ...), the latency
    histogram (bucket bounds in seconds and cumulative counts), texts per batch (sum and count) and
    tokens (all and out of vocabulary)."""
    metrics.DEFERRED.flush()  # calls answered so far, including this process's pending updates
    models: dict[str, dict[str, Any]] = {}

    def model(name: str) -> dict[str, Any]:
        return models.setdefault(name, {"calls": 0.0, "failed": 0.0, "refused": 0.0, "latency": {},
                                        "batch_sum": 0.0, "batches": 0.0, "tokens": 0.0, "oov_tokens": 0.0})

    for family in _registry().collect():
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            name = labels.get("model")
            if not name or name == "unknown":
                continue
            if sample.name == "tlserve_requests_total":
                entry = model(name)
                entry["calls"] += value
                code = labels.get("code")
                if code in CALLER_ERRORS:
                    entry["refused"] += value
                elif code != "OK":
                    entry["failed"] += value
            elif sample.name == "tlserve_request_seconds_bucket":
                buckets = model(name)["latency"]
                buckets[labels["le"]] = buckets.get(labels["le"], 0.0) + value
            elif sample.name == "tlserve_batch_size_sum":
                model(name)["batch_sum"] += value
            elif sample.name == "tlserve_batch_size_count":
                model(name)["batches"] += value
            elif sample.name == "tlserve_tokens_total":
                model(name)["oov_tokens" if labels.get("kind") == "oov" else "tokens"] += value
    for entry in models.values():
        bounds = sorted(entry["latency"], key=lambda le: float("inf") if le == "+Inf" else float(le))
        entry["latency"] = {"bounds": [float(b) for b in bounds if b != "+Inf"],
                            "cumulative": [entry["latency"][b] for b in bounds]}
    return {"models": models}
