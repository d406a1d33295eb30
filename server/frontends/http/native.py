"""tlserve.v1 as JSON over HTTP: the native API's methods, following the proto's JSON mapping.

    GET  /v1/models                                      ListModels
    GET  /v1/models/{model}[/versions/{version}]         GetModel
    POST /v1/models/{model}[/versions/{version}]:classify   Classify, body {"texts": [...], "topK": 3, "explain": 3}

Requests follow protobuf's JSON mapping of ClassifyRequest (``top_k`` and ``topK`` both work, a
uint64 may be a number or a string, null is the default, unknown fields are refused by name), read
by `classify_request` rather than protobuf's JSON parser, whose per-string checks cost seconds on a
large body; answers are what gRPC returns in protobuf's JSON form: lowerCamelCase names, uint64
versions as strings, zero values left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.server.core.dataplane import PATH_VERSION, ClassifyCall
from tlserve.server.core.errors import ServingError
from tlserve.server.frontends.http import answers
from tlserve.server.frontends.http.body import invalid, read_json
from tlserve.server.frontends.http.common import HttpApi, model_routes
from tlserve.server.frontends.http.json_bodies import json_response
from tlserve.server.frontends.native_messages import model_info

CLASSIFY_SUFFIX = ":classify"
_MODEL = "/v1/models/{model:[^/:]+}"
METHOD = "http:Classify"
_UINT32 = (1 << 32) - 1
_UINT64 = (1 << 64) - 1


@dataclass
class JsonClassifyRequest:
    """A ClassifyRequest read from JSON."""

    texts: list[str] = field(default_factory=list)
    top_k: int = 0
    model: str = ""
    version: int = 0
    request_id: str = ""
    explain: int = 0


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


def classify_request(document: dict[str, Any]) -> JsonClassifyRequest:
    """The ClassifyRequest a JSON object spells; INVALID_ARGUMENT naming the field that is wrong."""
    call = JsonClassifyRequest()
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
        elif key == "explain":
            call.explain = _integer(value, key, _UINT32)
        else:
            raise invalid(f"the body is not a ClassifyRequest: no field {key!r} (fields: texts, topK, model, version, "
                          "requestId, explain)")
    return call


class NativeJsonApi(HttpApi):
    """tlserve.v1.Classifier over the data plane, as JSON."""

    def routes(self) -> list[web.RouteDef]:
        # Model names hold no ':' (tlserve.core.bundle.check_model_name), so "{model}:classify" is never a name.
        # Classification first: aiohttp tries the resources under one prefix in order.
        return [
            *model_routes("POST", _MODEL, CLASSIFY_SUFFIX, self.classify),
            web.get("/v1/models", self.list_models),
            *model_routes("GET", _MODEL, "", self.get_model),
        ]

    async def list_models(self, request: web.Request) -> web.Response:
        message = pb.ListModelsResponse(models=[model_info(model) for model in self.plane.describe_all()])
        return json_response(json_format.MessageToDict(message))

    async def get_model(self, request: web.Request) -> web.Response:
        model = self.plane.describe(request.match_info["model"], request.match_info.get("version", ""), PATH_VERSION)
        return json_response(json_format.MessageToDict(model_info(model)))

    async def classify(self, request: web.Request) -> web.Response:
        model = request.match_info["model"]
        try:
            call = await self._call(request, model)
        except ServingError as exc:  # a request the core never sees is counted all the same
            self.plane.refused(model, METHOD, exc)
            raise
        return await self.plane.classify(call, answers.classify_response)

    async def _call(self, request: web.Request, model: str) -> ClassifyCall:
        limit = self.plane.settings.max_texts_per_request
        # Its strings are the texts and a few names and values.
        document = await read_json(request, self.body_timeout, limit + 16,
                                   f"the limit is max_texts_per_request={limit} texts",
                                   'a ClassifyRequest, e.g. {"texts": ["..."], "topK": 3}')
        if not isinstance(document, dict):
            raise invalid(f"the body is a JSON {type(document).__name__}; send a ClassifyRequest object, "
                          'e.g. {"texts": ["..."]}')
        message = classify_request(document)
        # The path names the model (and version); a body that names another is a mistake.
        if message.model and message.model != model:
            raise invalid(f"the body names model {message.model!r} but the path names {model!r}")
        path_version = request.match_info.get("version", "")
        if message.version and path_version and str(message.version) != path_version:
            raise invalid(f"the body names version {message.version} but the path names {path_version}")
        return ClassifyCall(model, path_version or message.version, message.texts, METHOD, message.top_k,
                            message.request_id, carrier=lambda: request.headers, version_field=PATH_VERSION,
                            explain=message.explain)
