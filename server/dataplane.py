"""The data plane: request checks, model lookup, batching and responses, behind every API.

gRPC servicers stay thin: they turn a call into `DataPlane.classify` and a `ServingError`
into a status. Status codes follow the contract in protos/tlserve/v1/classifier.proto.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tlserve.client.v1 import classifier_pb2 as pb
from tlserve.server import metrics
from tlserve.server.batching import BatchStats, DeadlineExceeded, DynamicBatcher, QueueFull
from tlserve.server.repository import ModelNotFound, ModelRepository
from tlserve.server.runtime import ModelRuntime, Prediction
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)


class ServingError(Exception):
    """A failed call: the gRPC status code and a message naming the field or limit."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _record_batch(runtime: ModelRuntime, stats: BatchStats) -> None:
    metrics.DEFERRED.add(_apply_batch_stats, runtime, stats)


def _apply_batch_stats(aggregate: metrics.Aggregate, runtime: ModelRuntime, stats: BatchStats) -> None:
    # Per batch rather than per call: under load one batch serves many calls.
    model = metrics.for_model(runtime.name)
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
    aggregate.inc(metrics.texts_counter(runtime.name, str(runtime.version)), stats.size)


@dataclass
class ReloadResult:
    """What one pass over the repository changed."""

    loaded: list[dict[str, object]] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _manifest_stamp(path: Path) -> float:
    try:
        return (path / "manifest.json").stat().st_mtime
    except OSError:
        return -1.0


class DataPlane:
    """Classifies with the repository's models through one batcher per model version."""

    def __init__(self, repository: ModelRepository, settings: ServerSettings) -> None:
        self.repository = repository
        self.settings = settings
        self.batchers: dict[tuple[str, int], DynamicBatcher] = {}
        self.ready = False
        self.draining = False
        """Set at shutdown: calls in flight finish, but the server no longer reports ready."""
        self._reload_lock = asyncio.Lock()
        self._refused: dict[tuple[str, int], float] = {}

    async def reload(self) -> ReloadResult:
        """Brings the served versions in line with the repository, never dropping a call.

        New versions are loaded, verified against their manifest (sha256 of every file, the
        store's fingerprint) and warmed in a thread, and only then swapped in. Versions gone
        from disk (or from the policy) are taken out of routing first, then their batchers
        finish the calls already queued. A bad version is refused once (log line and
        metric) until its manifest changes; what already serves keeps serving.
        """
        async with self._reload_lock:
            result = ReloadResult()
            desired = await asyncio.to_thread(self.repository.desired)
            for name, versions in desired.items():
                for version in versions:
                    if (name, version) in self.batchers:
                        continue
                    path = self.repository.root / name / str(version)
                    stamp = _manifest_stamp(path)
                    if self._refused.get((name, version)) == stamp:
                        continue
                    try:
                        runtime = await asyncio.to_thread(self._load_and_warm, path)
                    except Exception as exc:  # any bad bundle: refuse it, keep serving the rest
                        self._refused[(name, version)] = stamp
                        metrics.LOAD_FAILURES.labels(type(exc).__name__).inc()
                        _LOGGER.error("refused %s: %s", path, exc)
                        result.refused.append(f"{path}: {exc}")
                        continue
                    batcher = DynamicBatcher(runtime, self.settings.max_batch_size,
                                             self.settings.max_queue_delay_us, self.settings.max_queue_size,
                                             _record_batch, self.settings.inline_batch_texts,
                                             self.settings.adaptive_delay_us)
                    batcher.start()
                    self.batchers[(name, version)] = batcher
                    self.repository.add(runtime)  # from here on, calls can reach it
                    result.loaded.append(runtime.describe())
                    _LOGGER.info("serving %s", runtime.describe())
            for name, version in list(self.batchers):
                if version in desired.get(name, ()):
                    continue
                self.repository.remove(name, version)  # no new call reaches it...
                batcher = self.batchers.pop((name, version))
                await batcher.close()  # ...and the calls already queued finish
                result.unloaded.append(f"{name}/{version}")
                _LOGGER.info("unloaded %s/%d", name, version)
            metrics.MODELS_LOADED.set(len(self.batchers))
            self.ready = True
            return result

    def _load_and_warm(self, path: Path) -> ModelRuntime:
        runtime = self.repository.load(path)
        runtime.warm_up(self.settings.warmup_text)
        return runtime

    async def close(self) -> None:
        await asyncio.gather(*(batcher.close() for batcher in self.batchers.values()))

    def runtime(self, name: str, version: int) -> ModelRuntime:
        if not self.ready:
            raise ServingError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its models; retry")
        try:
            return self.repository.get(name, version)
        except ModelNotFound as exc:
            raise ServingError(grpc.StatusCode.NOT_FOUND, str(exc)) from None

    def check_texts(self, texts: Sequence[str]) -> None:
        if not texts:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "texts is empty: send at least one text")
        limit = self.settings.max_texts_per_request
        if len(texts) > limit:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"texts holds {len(texts)} texts; the limit is max_texts_per_request={limit}")
        byte_limit = self.settings.max_text_bytes
        for i, text in enumerate(texts):
            # len(str) <= bytes <= 4 * len(str): encode only when the cheap bound is not enough.
            if len(text) * 4 > byte_limit and len(text.encode("utf-8")) > byte_limit:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"texts[{i}] has {len(text.encode('utf-8'))} UTF-8 bytes; the limit is "
                    f"max_text_bytes={byte_limit}",
                )

    async def predict(self, name: str, version: int, texts: Sequence[str], deadline: float | None
                      ) -> tuple[ModelRuntime, Prediction]:
        """Checks, batches and runs `texts`; raises ServingError with the right status."""
        runtime = self.runtime(name, version)
        self.check_texts(texts)
        batcher = self.batchers[(runtime.name, runtime.version)]
        try:
            prediction = await batcher.submit(list(texts), deadline)
        except QueueFull as exc:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except DeadlineExceeded as exc:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)) from None
        return runtime, prediction

    async def classify(self, request: pb.ClassifyRequest, deadline: float | None, method: str) -> bytes:
        """The call's ClassifyResponse, already serialized (see tlserve.server.encoding)."""
        with CallObserver(self.model_label(request.model), request.version, method) as call:
            runtime, prediction = await self.predict(request.model, request.version, request.texts, deadline)
            call.version = runtime.version
            responded = time.perf_counter()
            response = build_response(runtime, prediction, request.top_k, request.request_id)
            metrics.DEFERRED.add(metrics.observe, metrics.for_model(runtime.name).respond,
                                 time.perf_counter() - responded)
            return response

    def model_label(self, name: str) -> str:
        """`name` for metrics if it is served, else "unknown": clients cannot mint label values."""
        return name if name in self.repository.models else "unknown"


class CallObserver:
    """Counts the call by status code and times it, whichever API it came through.

    A class rather than @contextlib.contextmanager: it runs on every call, and a plain
    __enter__/__exit__ costs a fraction of a generator-based one.
    """

    __slots__ = ("method", "model", "started", "version")

    def __init__(self, model: str, version: int, method: str) -> None:
        self.model = model
        self.version = version
        """Set by the call once it knows which version answered."""
        self.method = method
        self.started = 0.0

    def __enter__(self) -> CallObserver:
        self.started = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        if kind is None:
            code = grpc.StatusCode.OK
        elif isinstance(error, ServingError):
            code = error.code
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
        metrics.DEFERRED.add(_count_call, self.model, self.version, self.method, code.name,
                             time.perf_counter() - self.started)


def _count_call(aggregate: metrics.Aggregate, model: str, version: int, method: str, code: str,
                seconds: float) -> None:
    aggregate.inc(metrics.request_counter(model, str(version or "latest"), method, code))
    aggregate.observe(metrics.request_latency(model, method), seconds)


def build_response(runtime: ModelRuntime, prediction: Prediction, top_k: int, request_id: str) -> bytes:
    """The serialized ClassifyResponse: per text, labels by decreasing probability, token count and OOV share."""
    return runtime.encoder.encode(runtime.name, runtime.version, prediction.probabilities, top_k,
                                  prediction.token_counts.tolist(), prediction.oov_fractions.tolist(), request_id)
