"""tlserve.v1 as JSON over HTTP: the native API's methods, following the proto's JSON mapping.

    GET  /v1/models                                      ListModels
    GET  /v1/models/{model}[/versions/{version}]         GetModel
    POST /v1/models/{model}[/versions/{version}]:classify   Classify, body {"texts": [...], "topK": 3}

Requests are parsed with protobuf's JSON parser (so ``top_k`` and ``topK`` both work, and
unknown fields are refused by name); answers are what gRPC returns in protobuf's JSON form:
lowerCamelCase names, uint64 versions as strings, zero values left out.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.server.core import observe
from tlserve.server.core.dataplane import Answer, DataPlane
from tlserve.server.frontends.http_common import invalid, json_response, parse_json, read_body, version_of
from tlserve.server.frontends.native_messages import model_info

CLASSIFY_SUFFIX = ":classify"


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

    @staticmethod
    def _request(body: bytes, model: str, version: int) -> pb.ClassifyRequest:
        document = parse_json(body, 'a ClassifyRequest, e.g. {"texts": ["..."], "topK": 3}')
        if not isinstance(document, dict):
            raise invalid(f"the body is a JSON {type(document).__name__}; send a ClassifyRequest object, "
                          'e.g. {"texts": ["..."]}')
        message = pb.ClassifyRequest()
        try:
            json_format.ParseDict(document, message)
        except json_format.ParseError as exc:
            raise invalid(f"the body is not a ClassifyRequest: {exc}") from None
        # The path names the model (and version); a body that names another is a mistake.
        if message.model and message.model != model:
            raise invalid(f"the body names model {message.model!r} but the path names {model!r}")
        if message.version and version and message.version != version:
            raise invalid(f"the body names version {message.version} but the path names {version}")
        return message
