"""tlserve.v1 as JSON over HTTP: the native API's methods, following the proto's JSON mapping.

    GET  /v1/models                                      ListModels
    GET  /v1/models/{model}[/versions/{version}]         GetModel
    POST /v1/models/{model}[/versions/{version}]:classify   Classify, body {"texts": [...], "topK": 3}

Requests follow protobuf's JSON mapping of ClassifyRequest (``top_k`` and ``topK`` both work, a
uint64 may be a number or a string, null is the default, unknown fields are refused by name), read
by `classify_call` rather than protobuf's JSON parser, whose per-string checks cost seconds on a
large body; answers are what gRPC returns in protobuf's JSON form: lowerCamelCase names, uint64
versions as strings, zero values left out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.server.core import observe
from tlserve.server.core.dataplane import Answer, DataPlane
from tlserve.server.frontends.http_common import (
    check_string_count,
    invalid,
    json_response,
    parse_json,
    read_body,
    version_of,
)
from tlserve.server.frontends.native_messages import model_info

CLASSIFY_SUFFIX = ":classify"
_UINT32 = (1 << 32) - 1
_UINT64 = (1 << 64) - 1


@dataclass
class ClassifyCall:
    """A ClassifyRequest read from JSON."""

    texts: list[str] = field(default_factory=list)
    top_k: int = 0
    model: str = ""
    version: int = 0
    request_id: str = ""


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise invalid(f"the body is not a ClassifyRequest: {name} must be a string, not {_kind(value)}")
    return value


def _integer(value: Any, name: str, most: int) -> int:
    """An unsigned integer field as protobuf's JSON mapping writes it: a number, or a string of digits."""
    number: Any = value
    digits = isinstance(value, str) and value.isascii() and value.isdecimal()
    if digits or (isinstance(value, float) and value.is_integer()):
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= most:
        raise invalid(f"the body is not a ClassifyRequest: {name} must be an integer in 0..{most}, not {value!r}")
    return number


def _kind(value: Any) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__}"


def classify_call(document: dict[str, Any]) -> ClassifyCall:
    """The ClassifyRequest a JSON object spells; INVALID_ARGUMENT naming the field that is wrong."""
    call = ClassifyCall()
    for key, value in document.items():
        if value is None:  # protobuf's JSON mapping: null is the field's default
            continue
        if key == "texts":
            if not isinstance(value, list):
                raise invalid(f"the body is not a ClassifyRequest: texts must be a list of strings, not {_kind(value)}")
            for i, text in enumerate(value):
                if not isinstance(text, str):
                    raise invalid(f"the body is not a ClassifyRequest: texts[{i}] is {_kind(text)}; send strings")
            call.texts = value
        elif key in ("topK", "top_k"):
            call.top_k = _integer(value, key, _UINT32)
        elif key == "model":
            call.model = _string(value, key)
        elif key == "version":
            call.version = _integer(value, key, _UINT64)
        elif key in ("requestId", "request_id"):
            call.request_id = _string(value, key)
        else:
            raise invalid(f"the body is not a ClassifyRequest: no field {key!r} (fields: texts, topK, model, version, "
                          "requestId)")
    return call


def classify_json(answer: Answer, top_k: int, request_id: str) -> dict[str, Any]:
    """ClassifyResponse in protobuf's JSON mapping, built directly (no message objects on the hot path)."""
    scorer, prediction = answer.scorer, answer.prediction
    probabilities = prediction.probabilities
    labels = scorer.labels
    k = len(labels) if top_k <= 0 or top_k >= len(labels) else top_k
    # Stable: equal probabilities keep label order, as the gRPC encoder orders them.
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()
    # float32 as its shortest decimal (0.929932, not 0.9299319982528687), as protobuf's JSON printer
    # writes it: the same float once parsed, and the same text.
    values = probabilities.astype(np.str_).tolist()
    fractions = prediction.oov_fractions.astype(np.str_).tolist()
    results = []
    for row, ranked, tokens, oov in zip(values, order, prediction.token_counts.tolist(), fractions, strict=True):
        result: dict[str, Any] = {"labels": [{"label": labels[j], "probability": float(row[j])}
                                             if row[j] != "0.0" else {"label": labels[j]} for j in ranked]}
        if tokens:
            result["tokenCount"] = tokens
        if oov != "0.0":
            result["oovFraction"] = float(oov)
        results.append(result)
    body: dict[str, Any] = {"model": scorer.name, "version": str(scorer.version), "results": results}
    if request_id:
        body["requestId"] = request_id
    return body


class NativeJsonApi:
    """tlserve.v1.Classifier over the data plane, as JSON."""

    def __init__(self, plane: DataPlane, body_timeout: float) -> None:
        self.plane = plane
        self.body_timeout = body_timeout

    def routes(self) -> list[web.RouteDef]:
        # Model names hold no ':' (tlserve.bundle.check_model_name), so "{model}:classify" is never a name.
        # Classification first: aiohttp tries the resources under one prefix in order.
        return [
            web.post("/v1/models/{model:[^/:]+}" + CLASSIFY_SUFFIX, self.classify),
            web.post("/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}" + CLASSIFY_SUFFIX, self.classify),
            web.get("/v1/models", self.list_models),
            web.get("/v1/models/{model:[^/:]+}", self.get_model),
            web.get("/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}", self.get_model),
        ]

    async def list_models(self, request: web.Request) -> web.Response:
        message = pb.ListModelsResponse(models=[model_info(self.plane, served.scorer) for served in self.plane.table])
        return json_response(json_format.MessageToDict(message))

    async def get_model(self, request: web.Request) -> web.Response:
        served = self.plane.served(request.match_info["model"], version_of(request))
        return json_response(json_format.MessageToDict(model_info(self.plane, served.scorer)))

    async def classify(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        with observe.observe_call(self.plane.model_label(model), 0, "http:Classify", lambda: request.headers) as call:
            version = version_of(request)
            call.version = version
            message = self._request(await read_body(request, self.body_timeout), model, version)
            version = version or message.version
            answer = await self.plane.predict(model, version, message.texts, None)
            call.version = answer.scorer.version
            started = time.perf_counter()
            response = json_response(classify_json(answer, message.top_k, message.request_id))
            call.responded(answer.scorer.name, answer.prediction, len(message.texts), started)
            return response

    def _request(self, body: bytes, model: str, version: int) -> ClassifyCall:
        limit = self.plane.settings.max_texts_per_request
        # Its strings are the texts and a few names and values.
        check_string_count(body, limit + 16, f"the limit is max_texts_per_request={limit} texts")
        document = parse_json(body, 'a ClassifyRequest, e.g. {"texts": ["..."], "topK": 3}')
        if not isinstance(document, dict):
            raise invalid(f"the body is a JSON {type(document).__name__}; send a ClassifyRequest object, "
                          'e.g. {"texts": ["..."]}')
        call = classify_call(document)
        # The path names the model (and version); a body that names another is a mistake.
        if call.model and call.model != model:
            raise invalid(f"the body names model {call.model!r} but the path names {model!r}")
        if call.version and version and call.version != version:
            raise invalid(f"the body names version {call.version} but the path names {version}")
        return call
