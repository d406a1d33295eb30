"""The Open Inference Protocol's REST binding (KServe V2), over the data plane.

    GET  /v2                    /v2/health/live            /v2/health/ready
    GET  /v2/models/{model}[/versions/{version}]           model metadata
    GET  /v2/models/{model}[/versions/{version}]/ready
    POST /v2/models/{model}[/versions/{version}]/infer

The same tensors as the gRPC binding (`oip_tensors`): ``text`` BYTES in; ``probabilities``
FP32 and ``label`` BYTES out, with Triton's classification extension. Tensors travel as JSON
(``"data": [...]``) or in Triton's binary data extension, which tritonclient's HTTP client
uses by default: the body is a JSON header of ``Inference-Header-Content-Length`` bytes, then
each binary tensor in order (``"parameters": {"binary_data_size": N}`` on it); outputs asked
for with ``"binary_data": true`` (or the request's ``"binary_data_output": true``) come back
the same way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from tlserve import __version__
from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.server.core.dataplane import PATH_VERSION, ClassifyCall
from tlserve.server.core.errors import ErrorCode, ServingError, too_many_texts
from tlserve.server.frontends.http import answers
from tlserve.server.frontends.http.answers import HEADER_LENGTH
from tlserve.server.frontends.http.body import invalid, read_json_header
from tlserve.server.frontends.http.common import HttpApi, model_routes
from tlserve.server.frontends.http.json_bodies import json_response
from tlserve.server.frontends.oip_tensors import (
    EXPLAIN_DEFAULT,
    EXPLANATION,
    INPUT,
    NAMED_OUTPUTS,
    OUTPUTS,
    RequestedOutput,
    answer_needs,
    model_metadata,
    split_bytes_tensor,
)

METHOD = "http:ModelInfer"
EXTENSIONS = ["classification", "binary_tensor_data"]
_MODEL = "/v2/models/{model}"


def _plain(parameters: dict[str, Any]) -> dict[str, Any]:
    """InferParameter messages (as protobuf JSON) -> the REST binding's plain values."""
    out = {}
    for key, value in parameters.items():
        ((kind, scalar),) = value.items()
        out[key] = int(scalar) if kind == "int64_param" else scalar
    return out


def metadata_json(message: v2.ModelMetadataResponse) -> dict[str, Any]:
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for tensor in (*document.get("inputs", []), *document.get("outputs", [])):
        tensor["shape"] = [int(d) for d in tensor["shape"]]
        tensor["parameters"] = _plain(tensor.get("parameters", {}))
    document["parameters"] = _plain(document.get("parameters", {}))
    return document


class InferRequest:
    """An infer request's texts and wanted outputs, from JSON or the binary data extension."""

    def __init__(self, document: Any, binary: bytes, max_texts: int) -> None:
        if not isinstance(document, dict):
            raise invalid(f"the body is a JSON {type(document).__name__}; send an inference request object")
        self.max_texts = max_texts
        self.id = document.get("id", "")
        if not isinstance(self.id, str):
            raise invalid(f"id must be a string, not {type(self.id).__name__}")
        parameters = self._object(document.get("parameters", {}), "parameters")
        self.binary_output = parameters.get("binary_data_output") is True
        self.texts = self._texts(document.get("inputs"), binary)
        self.outputs = self._outputs(document.get("outputs"))
        self.top_k, self.explain = answer_needs(self.outputs)

    @staticmethod
    def _object(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise invalid(f"{where} must be a JSON object, not {type(value).__name__}")
        return value

    def _texts(self, inputs: Any, binary: bytes) -> list[str]:
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise invalid(f"inputs must be a list of one tensor, '{INPUT}' (BYTES, shape [-1])")
        tensor = inputs[0]
        where = "inputs[0]"
        if tensor.get("name") != INPUT:
            raise invalid(f"{where}: name is {tensor.get('name')!r}; the model has one input, '{INPUT}'")
        if tensor.get("datatype") != "BYTES":
            raise invalid(f"{where} '{INPUT}': datatype is {tensor.get('datatype')!r}; send BYTES (UTF-8 texts)")
        shape = tensor.get("shape")
        if (not isinstance(shape, list) or not all(type(d) is int for d in shape)
                or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0):
            raise invalid(f"{where} '{INPUT}': shape is {shape!r}; send [n] (or [n, 1]) for n texts")
        if shape[0] > self.max_texts:
            raise too_many_texts(f"{where} '{INPUT}': shape {shape}", shape[0], self.max_texts)
        parameters = self._object(tensor.get("parameters", {}), f"{where}.parameters")
        size = parameters.get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or size != len(binary):
                raise invalid(f"{where} '{INPUT}': binary_data_size is {size!r} but {len(binary)} bytes follow the "
                              "JSON header")
            texts = []
            for i, element in enumerate(split_bytes_tensor(binary, f"{where} '{INPUT}' binary data", shape[0])):
                try:
                    texts.append(element.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise invalid(f"{where} '{INPUT}': element {i} is not UTF-8 (byte {exc.start})") from None
        else:
            if binary:
                raise invalid(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size")
            data = tensor.get("data")
            if not isinstance(data, list):
                raise invalid(f"{where} '{INPUT}': data must be a list of strings")
            if len(shape) == 2 and all(isinstance(row, list) and len(row) == 1 for row in data):
                data = [row[0] for row in data]
            for i, text in enumerate(data):
                if not isinstance(text, str):
                    raise invalid(f"{where} '{INPUT}': data[{i}] is a JSON {type(text).__name__}; send strings")
            texts = data
        if len(texts) != shape[0]:
            raise invalid(f"{where} '{INPUT}': shape {shape} says {shape[0]} texts but {len(texts)} were sent")
        return texts

    def _outputs(self, outputs: Any) -> list[tuple[RequestedOutput, bool]]:
        """Each wanted output with whether it goes back as binary data."""
        if outputs is None or outputs == []:  # none asked for: all of them, as Triton answers
            return [(RequestedOutput(name), self.binary_output) for name in OUTPUTS]
        if not isinstance(outputs, list):
            raise invalid("outputs must be a list of {\"name\": ...} objects")
        wanted = []
        for i, output in enumerate(outputs):
            output = self._object(output, f"outputs[{i}]")
            name = output.get("name")
            if name not in NAMED_OUTPUTS:
                raise invalid(f"outputs[{i}] {name!r}: the model's outputs are {list(NAMED_OUTPUTS)}")
            parameters = self._object(output.get("parameters", {}), f"outputs[{i}].parameters")
            k = parameters.get("classification", 0)
            if type(k) is not int or k < 0 or ("classification" in parameters and k == 0):
                raise invalid(f"outputs[{i}] '{name}': parameter classification must be an integer > 0, got {k!r}")
            words = parameters.get("explain", EXPLAIN_DEFAULT) if name == EXPLANATION else 0
            if type(words) is not int or (name == EXPLANATION and words <= 0):
                raise invalid(f"outputs[{i}] '{name}': parameter explain must be an integer > 0, got {words!r}")
            binary = parameters.get("binary_data", self.binary_output)
            if not isinstance(binary, bool):
                raise invalid(f"outputs[{i}] '{name}': parameter binary_data must be true or false")
            wanted.append((RequestedOutput(name, k, words), binary))
        return wanted


class OpenInferenceRest(HttpApi):
    """The Open Inference Protocol's REST endpoints."""

    def routes(self) -> list[web.RouteDef]:
        # Inference first: aiohttp tries the resources under one prefix in order.
        return [
            *model_routes("POST", _MODEL, "/infer", self.infer),
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            *model_routes("GET", _MODEL, "", self.model_metadata),
            *model_routes("GET", _MODEL, "/ready", self.model_ready),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "tlserve", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    # The protocol answers readiness with the status: 200 for true, a 4xx for false.
    async def ready(self, request: web.Request) -> web.Response:
        ready = self.plane.live_ready
        return json_response({"ready": ready}, status=200 if ready else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        model = self.plane.describe(request.match_info["model"], request.match_info.get("version", ""), PATH_VERSION)
        return json_response(metadata_json(model_metadata(model)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        version = request.match_info.get("version", "")
        try:
            model = self.plane.describe(name, version, PATH_VERSION)
        except ServingError as exc:  # a malformed version is a 400; an unknown model is simply not ready
            if exc.code is ErrorCode.INVALID_ARGUMENT:
                raise
            return json_response({"name": name, "ready": False}, status=404)
        ready = self.plane.is_ready(name, version, PATH_VERSION)
        return json_response({"name": name, "version": str(model.version), "ready": ready},
                             status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        try:
            parsed = await self._parse(request)
        except ServingError as exc:  # a request the core never sees is counted all the same
            self.plane.refused(name, METHOD, exc)
            raise
        call = ClassifyCall(name, request.match_info.get("version", ""), parsed.texts, METHOD, parsed.top_k,
                            parsed.id, carrier=lambda: request.headers, version_field=PATH_VERSION,
                            explain=parsed.explain, explain_field="the explanation output's explain")
        return await self.plane.classify(call, partial(answers.infer_response, parsed.id, parsed.outputs))

    async def _parse(self, request: web.Request) -> InferRequest:
        limit = self.plane.settings.max_texts_per_request
        # Its strings are the texts and a few dozen names and parameters at most.
        document, binary = await read_json_header(
            request, self.body_timeout, HEADER_LENGTH, limit + 64, f"the limit is max_texts_per_request={limit} texts",
            'an inference request, e.g. {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
            '"data": ["..."]}]}')
        return InferRequest(document, binary, limit)
