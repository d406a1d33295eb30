"""A small typed client for tlserve, sync (`Classifier`) and asyncio (`AsyncClassifier`).

Needs only grpcio and protobuf::

    from tlserve.client import Classifier

    with Classifier("localhost:50051", model="tickets") as classifier:
        for result in classifier.classify(["my invoice is wrong", "reset my password"]):
            print(result.label, result.probability)

Channel behaviour comes from a gRPC service config: calls that fail with UNAVAILABLE
(a replica restarting, a connection reset) are retried with backoff by gRPC itself, and
with ``round_robin=True`` a DNS name is resolved to every address and calls are spread
over all of them (scaled replicas share the load).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.contract.wire import varint

DEFAULT_TARGET = "localhost:50051"


@dataclass(frozen=True)
class LabelProbability:
    label: str
    probability: float


@dataclass(frozen=True)
class WordContribution:
    word: str
    """The word as the model reads it."""
    contribution: float
    """The top label's probability for the whole text minus its probability without this word."""
    count: int
    """Occurrences of the word in the text."""


@dataclass(frozen=True)
class Explanation:
    """The words the top label owes most (asked for with ``explain=N``)."""

    label: str
    words: list[WordContribution]
    """Largest contribution first."""


@dataclass(frozen=True)
class Classification:
    """The answer for one text."""

    labels: list[LabelProbability]
    """Labels by decreasing probability (top_k of them, or all)."""
    token_count: int
    oov_fraction: float
    model: str
    version: int
    explanation: Explanation | None = None
    """Why the top label, when the call asked for ``explain`` words."""

    @property
    def label(self) -> str:
        return self.labels[0].label

    @property
    def probability(self) -> float:
        return self.labels[0].probability

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": self.probability,
            "labels": {item.label: item.probability for item in self.labels},
            "token_count": self.token_count,
            "oov_fraction": self.oov_fraction,
            "model": self.model,
            "version": self.version,
            **({"explanation": [{"word": w.word, "contribution": w.contribution, "count": w.count}
                                for w in self.explanation.words]} if self.explanation is not None else {}),
        }


class ClassifierError(Exception):
    """A call failed; `code` is the gRPC status code, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _service_config(round_robin: bool, retries: int) -> str:
    config: dict[str, Any] = {
        "methodConfig": [{
            "name": [{"service": "tlserve.v1.Classifier"}, {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {
                "maxAttempts": max(2, retries + 1),
                "initialBackoff": "0.05s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }]
    }
    if round_robin:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(config)


def channel_options(round_robin: bool = False, retries: int = 3, keepalive_seconds: float = 30.0,
                    max_message_bytes: int = 64 << 20) -> list[tuple[str, Any]]:
    return [
        ("grpc.service_config", _service_config(round_robin, retries)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _target(target: str, round_robin: bool) -> str:
    # round_robin needs every address of the name: the dns resolver, not the default one.
    if round_robin and "://" not in target and not target.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return f"dns:///{target}"
    return target


def _open_channel(module: Any, target: str, round_robin: bool, retries: int, tls: bool,
                  root_certificates: bytes | None, private_key: bytes | None, certificate_chain: bytes | None,
                  options: Iterable[tuple[str, Any]]) -> Any:
    """A channel of `module` (grpc or grpc.aio) with the service config, keepalive and TLS options."""
    opts = channel_options(round_robin, retries) + list(options)
    address = _target(target, round_robin)
    if tls or root_certificates or certificate_chain:
        credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
        return module.secure_channel(address, credentials, opts)
    return module.insecure_channel(address, opts)


def _results(response: pb.ClassifyResponse) -> list[Classification]:
    return [
        Classification(
            labels=[LabelProbability(item.label, item.probability) for item in result.labels],
            token_count=result.token_count,
            oov_fraction=result.oov_fraction,
            model=response.model,
            version=response.version,
            explanation=Explanation(result.explanation.label, [
                WordContribution(w.word, w.contribution, w.count) for w in result.explanation.words
            ]) if result.HasField("explanation") else None,
        )
        for result in response.results
    ]


# The server's defaults, used when its own limits cannot be read (see `_Limits`).
DEFAULT_MAX_TEXTS = 1024
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
# Texts per request that asks for explanations (ClassifyRequest.explain).
EXPLAIN_MAX_TEXTS = 32
# A call this small never asks the server for its limits: it fits any server's.
_SMALL_TEXTS = 64
_SMALL_BYTES = 64 << 10
# Room in a request for everything but the texts (model name, version, top_k, request id).
_ENVELOPE_BYTES = 1024


def _text_bytes(text: str) -> int:
    """A text's size in a request: its UTF-8 bytes, a field tag and a length of up to 5 bytes."""
    return (len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))) + 6


def split(texts: Sequence[str], max_texts: int, max_bytes: int) -> list[tuple[int, int]]:
    """[start, end) ranges of `texts`, in order, each a request of at most `max_texts` texts and `max_bytes`
    bytes (a single text over the byte limit goes alone, and the server names it)."""
    ranges: list[tuple[int, int]] = []
    start, size = 0, _ENVELOPE_BYTES
    for i, text in enumerate(texts):
        cost = _text_bytes(text)
        if i > start and (i - start >= max_texts or size + cost > max_bytes):
            ranges.append((start, i))
            start, size = i, _ENVELOPE_BYTES
        size += cost
    ranges.append((start, len(texts)))
    return ranges


def _is_small(texts: Sequence[str], explain: int = 0) -> bool:
    return len(texts) <= (EXPLAIN_MAX_TEXTS if explain else _SMALL_TEXTS) and sum(map(len, texts)) * 4 <= _SMALL_BYTES


def _explained(limits: tuple[int, int], explain: int) -> tuple[int, int]:
    """The request limits to split by, for a call asking for explanations (the server takes 32 texts then)."""
    return (min(limits[0], EXPLAIN_MAX_TEXTS), limits[1]) if explain else limits


@dataclass
class _Options:
    model: str | None
    timeout: float | None
    token: str | None
    max_texts: int | None
    max_bytes: int | None

    def metadata(self) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def name(self, model: str | None) -> str:
        name = model or self.model
        if not name:
            raise ValueError("no model given: pass model= here or to the client")
        return name

    def request(self, texts: Sequence[str], model: str | None, version: int, top_k: int, request_id: str = "",
                explain: int = 0) -> pb.ClassifyRequest:
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        return pb.ClassifyRequest(model=self.name(model), version=version, texts=list(texts), top_k=top_k,
                                  request_id=request_id, explain=explain)

    def deadline(self, timeout: float | None) -> float | None:
        seconds = timeout or self.timeout
        return None if seconds is None else time.monotonic() + seconds

    def limits(self, info: pb.ModelInfo | None) -> tuple[int, int]:
        """The request limits to split by: given to the client, else the server's, else its defaults."""
        served = info.limits if info is not None else None
        return (self.max_texts or (served.max_texts_per_request if served else 0) or DEFAULT_MAX_TEXTS,
                self.max_bytes or (served.max_request_bytes if served else 0) or DEFAULT_MAX_REQUEST_BYTES)


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline`; DEADLINE_EXCEEDED once none are."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ClassifierError(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed between its requests")
    return left


class _ClientBase:
    """The options and channel of both clients (`_GRPC`: grpc for the blocking one, grpc.aio for asyncio)."""

    _GRPC: Any = grpc

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        model: str | None = None,
        timeout: float | None = 10.0,
        retries: int = 3,
        round_robin: bool = False,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
        max_texts_per_request: int | None = None,
        max_request_bytes: int | None = None,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._channel = _open_channel(self._GRPC, target, round_robin, retries, tls, root_certificates, private_key,
                                      certificate_chain, options)
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._options = _Options(model, timeout, token, max_texts_per_request, max_request_bytes)
        self._limits: dict[str, tuple[int, int]] = {}


class Classifier(_ClientBase):
    """Synchronous client. `target` is host:port (or a gRPC target URI).

    `classify` takes any number of texts: a list longer than the server's request limits
    (``max_texts_per_request``, ``max_request_bytes``, read from the server once per model, or
    given here) goes as several requests, one after another, under the call's one deadline, all
    to the version that answered the first; the answers come back in order.
    """

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout or self._options.timeout, metadata=self._options.metadata())
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None

    def _limits_of(self, name: str) -> tuple[int, int]:
        if name not in self._limits:
            try:
                info = self.model(name) if not (self._options.max_texts and self._options.max_bytes) else None
            except ClassifierError:
                info = None  # an older server, say: its defaults
            self._limits[name] = self._options.limits(info)
        return self._limits[name]

    def classify(self, texts: Sequence[str], *, model: str | None = None, version: int = 0, top_k: int = 0,
                 timeout: float | None = None, explain: int = 0) -> list[Classification]:
        """Classifies `texts` (any number); one `Classification` per text, in order. With `explain`, each also
        names the `explain` words its top label owes most (requests of at most 32 texts then)."""
        request = self._options.request(texts, model, version, top_k, explain=explain)
        if _is_small(texts, explain):
            return _results(self._call(self._stub.Classify, request, timeout))
        deadline = self._options.deadline(timeout)
        results: list[Classification] = []
        for start, end in split(texts, *_explained(self._limits_of(request.model), explain)):
            part = self._options.request(texts[start:end], model, version, top_k, explain=explain)
            answered = _results(self._call(self._stub.Classify, part, _remaining(deadline)))
            version = version or (answered[0].version if answered else 0)  # the rest to the same version
            results.extend(answered)
        return results

    def classify_stream(self, batches: Iterable[Sequence[str]], *, model: str | None = None, version: int = 0,
                        top_k: int = 0, timeout: float | None = None, explain: int = 0
                        ) -> Iterator[list[Classification]]:
        """Streams many requests over one call; yields each request's results in order (with `explain`, each
        batch may hold at most 32 texts)."""
        requests = (self._options.request(texts, model, version, top_k, str(i), explain)
                    for i, texts in enumerate(batches))
        try:
            for response in self._stub.ClassifyStream(requests, timeout=timeout,
                                                      metadata=self._options.metadata()):
                yield _stream_results(response)
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None

    def models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout).models)

    def model(self, name: str, version: int = 0, timeout: float | None = None) -> pb.ModelInfo:
        return self._call(self._stub.GetModel, pb.GetModelRequest(model=name, version=version), timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN (or UNKNOWN), from grpc.health.v1."""
        call = self._channel.unary_unary(_HEALTH_CHECK, request_serializer=None, response_deserializer=None)
        try:
            answer: bytes = call(_health_request(service), timeout=timeout or self._options.timeout,
                                 metadata=self._options.metadata())
        except grpc.RpcError as exc:
            return _health_error(exc)
        return _health_status(answer)

    def wait_until_serving(self, timeout: float, service: str = "") -> str:
        """Asks for health until SERVING or `timeout` seconds; returns the last status (or error code)."""
        deadline = time.monotonic() + timeout
        status = "UNKNOWN"
        while True:
            try:
                status = self.health(service, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except ClassifierError as exc:
                status = exc.code.name
            if status == "SERVING" or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)


def _stream_results(response: pb.ClassifyResponse) -> list[Classification]:
    if response.HasField("error"):
        raise ClassifierError(grpc.StatusCode(_code(response.error.code)), response.error.message)
    return _results(response)


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


# The health messages are built by hand from their two fields so the client needs no
# grpcio-health-checking package (its protobuf pins are stricter than ours).
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def _health_request(service: str) -> bytes:
    request = service.encode("utf-8")
    return (b"\x0a" + varint(len(request)) + request) if request else b""


def _health_status(answer: bytes) -> str:
    status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")


def _health_error(exc: grpc.RpcError) -> str:
    if exc.code() == grpc.StatusCode.NOT_FOUND:
        return "SERVICE_UNKNOWN"
    raise ClassifierError(exc.code(), exc.details() or "") from None


class AsyncClassifier(_ClientBase):
    """asyncio client with the options and methods of `Classifier` (each a coroutine; `classify_stream` an
    async iterator)."""

    _GRPC = grpc.aio

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout or self._options.timeout, metadata=self._options.metadata())
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None

    async def _limits_of(self, name: str) -> tuple[int, int]:
        if name not in self._limits:
            try:
                info = await self.model(name) if not (self._options.max_texts and self._options.max_bytes) else None
            except ClassifierError:
                info = None
            self._limits[name] = self._options.limits(info)
        return self._limits[name]

    async def classify(self, texts: Sequence[str], *, model: str | None = None, version: int = 0, top_k: int = 0,
                       timeout: float | None = None, explain: int = 0) -> list[Classification]:
        """Classifies `texts` (any number); one `Classification` per text, in order (see `Classifier`)."""
        request = self._options.request(texts, model, version, top_k, explain=explain)
        if _is_small(texts, explain):
            return _results(await self._call(self._stub.Classify, request, timeout))
        deadline = self._options.deadline(timeout)
        results: list[Classification] = []
        for start, end in split(texts, *_explained(await self._limits_of(request.model), explain)):
            part = self._options.request(texts[start:end], model, version, top_k, explain=explain)
            answered = _results(await self._call(self._stub.Classify, part, _remaining(deadline)))
            version = version or (answered[0].version if answered else 0)
            results.extend(answered)
        return results

    async def classify_stream(self, batches: Iterable[Sequence[str]] | AsyncIterable[Sequence[str]], *,
                              model: str | None = None, version: int = 0, top_k: int = 0,
                              timeout: float | None = None, explain: int = 0) -> AsyncIterator[list[Classification]]:
        """Streams many requests over one call; yields each request's results in order (see `Classifier`)."""

        async def requests() -> AsyncIterator[pb.ClassifyRequest]:
            i = 0
            if isinstance(batches, AsyncIterable):
                async for texts in batches:
                    yield self._options.request(texts, model, version, top_k, str(i), explain)
                    i += 1
            else:
                for texts in batches:
                    yield self._options.request(texts, model, version, top_k, str(i), explain)
                    i += 1

        try:
            async for response in self._stub.ClassifyStream(requests(), timeout=timeout,
                                                            metadata=self._options.metadata()):
                yield _stream_results(response)
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None

    async def models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list((await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)).models)

    async def model(self, name: str, version: int = 0, timeout: float | None = None) -> pb.ModelInfo:
        result: pb.ModelInfo = await self._call(self._stub.GetModel, pb.GetModelRequest(model=name, version=version),
                                                timeout)
        return result

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN (or UNKNOWN), from grpc.health.v1."""
        call = self._channel.unary_unary(_HEALTH_CHECK, request_serializer=None, response_deserializer=None)
        try:
            answer: bytes = await call(_health_request(service), timeout=timeout or self._options.timeout,
                                       metadata=self._options.metadata())
        except grpc.RpcError as exc:
            return _health_error(exc)
        return _health_status(answer)

    async def wait_until_serving(self, timeout: float, service: str = "") -> str:
        """Asks for health until SERVING or `timeout` seconds; returns the last status (or error code)."""
        deadline = time.monotonic() + timeout
        status = "UNKNOWN"
        while True:
            try:
                status = await self.health(service, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except ClassifierError as exc:
                status = exc.code.name
            if status == "SERVING" or time.monotonic() >= deadline:
                return status
            await asyncio.sleep(0.05)
