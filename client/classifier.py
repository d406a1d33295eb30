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

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"


@dataclass(frozen=True)
class LabelProbability:
    label: str
    probability: float


@dataclass(frozen=True)
class Classification:
    """The answer for one text."""

    labels: list[LabelProbability]
    """Labels by decreasing probability (top_k of them, or all)."""
    token_count: int
    oov_fraction: float
    model: str
    version: int

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
        )
        for result in response.results
    ]


@dataclass
class _Options:
    model: str | None
    timeout: float | None
    token: str | None

    def metadata(self) -> list[tuple[str, str]] | None:
        return [("authorization", f"Bearer {self.token}")] if self.token else None

    def request(self, texts: Sequence[str], model: str | None, version: int, top_k: int, request_id: str = ""
                ) -> pb.ClassifyRequest:
        name = model or self.model
        if not name:
            raise ValueError("no model given: pass model= here or to the client")
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        return pb.ClassifyRequest(model=name, version=version, texts=list(texts), top_k=top_k, request_id=request_id)


class Classifier:
    """Synchronous client. `target` is host:port (or a gRPC target URI)."""

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
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._channel = _open_channel(grpc, target, round_robin, retries, tls, root_certificates, private_key,
                                      certificate_chain, options)
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._options = _Options(model, timeout, token)

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

    def classify(self, texts: Sequence[str], *, model: str | None = None, version: int = 0, top_k: int = 0,
                 timeout: float | None = None) -> list[Classification]:
        """Classifies `texts` in one call; one `Classification` per text, in order."""
        request = self._options.request(texts, model, version, top_k)
        return _results(self._call(self._stub.Classify, request, timeout))

    def classify_stream(self, batches: Iterable[Sequence[str]], *, model: str | None = None, version: int = 0,
                        top_k: int = 0, timeout: float | None = None) -> Iterator[list[Classification]]:
        """Streams many requests over one call; yields each request's results in order."""
        requests = (self._options.request(texts, model, version, top_k, str(i)) for i, texts in enumerate(batches))
        try:
            for response in self._stub.ClassifyStream(requests, timeout=timeout,
                                                      metadata=self._options.metadata()):
                if response.HasField("error"):
                    raise ClassifierError(grpc.StatusCode(_code(response.error.code)), response.error.message)
                yield _results(response)
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None

    def models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        return list(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout).models)

    def model(self, name: str, version: int = 0, timeout: float | None = None) -> pb.ModelInfo:
        return self._call(self._stub.GetModel, pb.GetModelRequest(model=name, version=version), timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING, SERVICE_UNKNOWN (or UNKNOWN), from grpc.health.v1."""
        return _health(self._channel, service, timeout or self._options.timeout)

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


def _code(number: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


def _health(channel: grpc.Channel, service: str, timeout: float | None) -> str:
    # The health messages are built by hand from their two fields so the client needs no
    # grpcio-health-checking package (its protobuf pins are stricter than ours).
    request = service.encode("utf-8")
    payload = (b"\x0a" + _varint(len(request)) + request) if request else b""
    call = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                               response_deserializer=None)
    try:
        answer: bytes = call(payload, timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        raise ClassifierError(exc.code(), exc.details() or "") from None
    status = answer[1] if len(answer) >= 2 and answer[0] == 0x08 else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, "UNKNOWN")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class AsyncClassifier:
    """asyncio client with the same options as `Classifier`."""

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
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self._channel = _open_channel(grpc.aio, target, round_robin, retries, tls, root_certificates, private_key,
                                      certificate_chain, options)
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._options = _Options(model, timeout, token)

    async def __aenter__(self) -> AsyncClassifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def classify(self, texts: Sequence[str], *, model: str | None = None, version: int = 0, top_k: int = 0,
                       timeout: float | None = None) -> list[Classification]:
        request = self._options.request(texts, model, version, top_k)
        try:
            response = await self._stub.Classify(request, timeout=timeout or self._options.timeout,
                                                 metadata=self._options.metadata())
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None
        return _results(response)

    async def models(self, timeout: float | None = None) -> list[pb.ModelInfo]:
        try:
            response = await self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout or self._options.timeout,
                                                   metadata=self._options.metadata())
        except grpc.RpcError as exc:
            raise ClassifierError(exc.code(), exc.details() or "") from None
        return list(response.models)
