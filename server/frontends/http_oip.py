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

import time
from typing import Any

import numpy as np
from aiohttp import web
from google.protobuf import json_format

from tlserve import __version__
from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.server.core import observe
from tlserve.server.core.dataplane import Answer, DataPlane
from tlserve.server.core.errors import ServingError
from tlserve.server.frontends.http_common import (
    check_string_count,
    dump_json,
    invalid,
    json_response,
    parse_json,
    read_body,
    version_of,
)
from tlserve.server.frontends.oip_tensors import (
    INPUT,
    OUTPUTS,
    PROBABILITIES,
    RequestedOutput,
    classification_strings,
    join_bytes_tensor,
    model_metadata,
    split_bytes_tensor,
    top_labels,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["classification", "binary_tensor_data"]
_MODEL = "/v2/models/{model}"
_VERSIONED = "/v2/models/{model}/versions/{version}"


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

    def __init__(self, body: bytes, header_length: str | None, plane: DataPlane) -> None:
        self.plane = plane
        binary = b""
        if header_length is not None:
            if not (header_length.isascii() and header_length.isdecimal()) or int(header_length) > len(body):
                raise invalid(f"{HEADER_LENGTH} is {header_length!r}; it must be the byte length of the JSON "
                              f"header at the start of the body ({len(body)} bytes)")
            body, binary = body[: int(header_length)], body[int(header_length):]
        what = 'an inference request, e.g. {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", ' \
               '"data": ["..."]}]}'
        # Its strings are the texts and a few dozen names and parameters at most.
        check_string_count(body, plane.settings.max_texts_per_request + 64,
                           f"the limit is max_texts_per_request={plane.settings.max_texts_per_request} texts")
        document = parse_json(body, what)
        if not isinstance(document, dict):
            raise invalid(f"the body is a JSON {type(document).__name__}; send an inference request object")
        self.id = document.get("id", "")
        if not isinstance(self.id, str):
            raise invalid(f"id must be a string, not {type(self.id).__name__}")
        parameters = self._object(document.get("parameters", {}), "parameters")
        self.binary_output = parameters.get("binary_data_output") is True
        self.texts = self._texts(document.get("inputs"), binary)
        self.outputs = self._outputs(document.get("outputs"))

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
        self.plane.check_count(shape[0], f"{where} '{INPUT}': shape {shape}")
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
        if outputs is None:
            return [(RequestedOutput(name), self.binary_output) for name in OUTPUTS]
        if not isinstance(outputs, list):
            raise invalid("outputs must be a list of {\"name\": ...} objects")
        wanted = []
        for i, output in enumerate(outputs):
            output = self._object(output, f"outputs[{i}]")
            name = output.get("name")
            if name not in OUTPUTS:
                raise invalid(f"outputs[{i}] {name!r}: the model's outputs are {list(OUTPUTS)}")
            parameters = self._object(output.get("parameters", {}), f"outputs[{i}].parameters")
            k = parameters.get("classification", 0)
            if type(k) is not int or k < 0 or ("classification" in parameters and k == 0):
                raise invalid(f"outputs[{i}] '{name}': parameter classification must be an integer > 0, got {k!r}")
            binary = parameters.get("binary_data", self.binary_output)
            if not isinstance(binary, bool):
                raise invalid(f"outputs[{i}] '{name}': parameter binary_data must be true or false")
            wanted.append((RequestedOutput(name, k), binary))
        return wanted


def infer_response(answer: Answer, request: InferRequest) -> web.Response:
    scorer = answer.scorer
    probabilities = answer.prediction.probabilities
    n, n_labels = probabilities.shape
    outputs = []
    blobs: list[bytes] = []
    for output, binary in request.outputs:
        tensor: dict[str, Any] = {"name": output.name}
        if output.classification:
            elements, k = classification_strings(probabilities, scorer.labels, output.classification)
            tensor.update(datatype="BYTES", shape=[n, k])
        elif output.name == PROBABILITIES:
            tensor.update(datatype="FP32", shape=[n, n_labels])
            if binary:
                blob = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
                tensor["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                tensor["data"] = probabilities.ravel().tolist()
            outputs.append(tensor)
            continue
        else:
            elements = top_labels(probabilities, scorer.labels)
            tensor.update(datatype="BYTES", shape=[n])
        if binary:
            blob = join_bytes_tensor(elements)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [element.decode() for element in elements]
        outputs.append(tensor)
    document: dict[str, Any] = {"model_name": scorer.name, "model_version": str(scorer.version), "outputs": outputs}
    if request.id:
        document["id"] = request.id
    if not blobs:
        return json_response(document)
    header = dump_json(document)
    return web.Response(body=b"".join([header, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(header))})


class OpenInferenceRest:
    """The Open Inference Protocol's REST endpoints."""

    def __init__(self, plane: DataPlane, body_timeout: float) -> None:
        self.plane = plane
        self.body_timeout = body_timeout

    def routes(self) -> list[web.RouteDef]:
        # Inference first: aiohttp tries the resources under one prefix in order.
        return [
            web.post(_MODEL + "/infer", self.infer),
            web.post(_VERSIONED + "/infer", self.infer),
            web.get("/v2", self.server_metadata),
            web.get("/v2/health/live", self.live),
            web.get("/v2/health/ready", self.ready),
            web.get(_MODEL, self.model_metadata),
            web.get(_VERSIONED, self.model_metadata),
            web.get(_MODEL + "/ready", self.model_ready),
            web.get(_VERSIONED + "/ready", self.model_ready),
        ]

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": "tlserve", "version": __version__, "extensions": EXTENSIONS})

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    # The protocol answers readiness with the status: 200 for true, a 4xx for false.
    async def ready(self, request: web.Request) -> web.Response:
        ready = self.plane.ready and not self.plane.draining
        return json_response({"ready": ready}, status=200 if ready else 400)

    async def model_metadata(self, request: web.Request) -> web.Response:
        served = self.plane.served(request.match_info["model"], version_of(request))
        return json_response(metadata_json(model_metadata(self.plane, served.scorer)))

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        version = version_of(request)  # a malformed version is a 400...
        try:
            served = self.plane.served(name, version)
        except ServingError:  # ...an unknown or not yet loaded model is simply not ready
            return json_response({"name": name, "ready": False}, status=404)
        ready = not self.plane.draining
        return json_response({"name": name, "version": str(served.version), "ready": ready},
                             status=200 if ready else 400)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        with observe.observe_call(self.plane.model_label(name), 0, "http:ModelInfer", lambda: request.headers) as call:
            version = version_of(request)
            call.version = version
            body = await read_body(request, self.body_timeout)
            parsed = InferRequest(body, request.headers.get(HEADER_LENGTH), self.plane)
            answer = await self.plane.predict(name, version, parsed.texts, None)
            call.version = answer.scorer.version
            started = time.perf_counter()
            response = infer_response(answer, parsed)
            call.responded(answer.scorer.name, answer.prediction, len(parsed.texts), started)
            return response
