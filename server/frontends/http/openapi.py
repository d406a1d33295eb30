"""The OpenAPI 3.1 document of the HTTP port, served at ``/openapi.json``.

Written by hand from the two APIs it describes (the Open Inference Protocol's REST binding
and the JSON mirror of tlserve.v1); tests/server/frontends/http/test_http.py checks that its paths and methods are
exactly the routes the server answers, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from tlserve import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "malformed request or a limit broken (the message names the field or limit)"),
    "401": _json(_ref("Error"), "missing or wrong bearer token (when the server requires one)"),
    "404": _json(_ref("Error"), "no such model or version"),
    "413": _json(_ref("Error"), "request body over the size limit"),
    "429": _json(_ref("Error"), "the model's queue is full; retry later"),
    "503": _json(_ref("Error"), "loading or shutting down; retry (on another replica)"),
    "504": _json(_ref("Error"), "deadline passed before the texts were classified"),
}
_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}


def _versioned(path: str, item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`item` at /.../{model}<path> and /.../{model}/versions/{version}<path>."""
    def with_parameters(parameters: list[dict[str, Any]]) -> dict[str, Any]:
        return {method: {**operation, "parameters": parameters,
                         "operationId": operation["operationId"] + ("Version" if len(parameters) > 1 else "")}
                for method, operation in item.items()}

    base, _, suffix = path.partition("{model}")
    return {f"{base}{{model}}{suffix}": with_parameters([_MODEL]),
            f"{base}{{model}}/versions/{{version}}{suffix}": with_parameters([_MODEL, _VERSION])}


def _operation(operation_id: str, summary: str, responses: dict[str, Any],
               body: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": operation_id, "summary": summary, "responses": responses}
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return out


def document() -> dict[str, Any]:
    metadata_errors = {code: _ERRORS[code] for code in ("400", "401", "404", "503")}
    paths: dict[str, Any] = {
        "/v2": {"get": _operation("serverMetadata", "Server name, version and protocol extensions",
                                  {"200": _json(_ref("ServerMetadata"), "server metadata")})},
        "/v2/health/live": {"get": _operation("serverLive", "Liveness (open without a token)",
                                              {"200": _json(_ref("Live"), "the process answers")})},
        "/v2/health/ready": {"get": _operation("serverReady", "Readiness (open without a token)", {
            "200": _json(_ref("Ready"), "models loaded, taking traffic"),
            "400": _json(_ref("Ready"), "still loading, or shutting down")})},
        "/v1/models": {"get": _operation("listModels", "Every served model (tlserve.v1 ListModels)",
                                         {"200": _json(_ref("ListModelsResponse"), "the served models"),
                                          "401": _ERRORS["401"]})},
        "/": {"get": _operation("page", "The status page (HTML; open: it holds no data, its reads take the token)",
                                {"200": {"description": "the page", "content": {"text/html": {"schema": {
                                    "type": "string"}}}}})},
        "/favicon.ico": {"get": _operation("pageIcon", "The page's icon (SVG; open)", {
            "200": {"description": "the icon", "content": {"image/svg+xml": {"schema": {"type": "string"}}}}})},
        "/ui/{name}": {"get": {**_operation("pageFile", "The page's script and style sheet", {
            "200": {"description": "the file", "content": {"text/css": {"schema": {"type": "string"}},
                                                           "text/javascript": {"schema": {"type": "string"}}}},
            "404": _ERRORS["404"]}), "parameters": [{"name": "name", "in": "path", "required": True,
                                                     "schema": {"type": "string"}}]}},
        "/ui/api/stats": {"get": _operation("pageStats", "The server's own metrics per model, for the page", {
            "200": _json(_ref("Stats"), "cumulative counts and histograms per model"), "401": _ERRORS["401"]})},
        "/ui/api/models/{model}/versions/{version}/report": {"get": {**_operation(
            "pageReport", "A version's training report (report.json) and the figures it has", {
                "200": _json({"type": "object"}, "the report"), **metadata_errors}),
            "parameters": [_MODEL, _VERSION]}},
        "/ui/api/models/{model}/versions/{version}/figures/{name}": {"get": {**_operation(
            "pageFigure", "One of a version's report figures", {
                "200": {"description": "the figure", "content": {"image/png": {"schema": {
                    "type": "string", "format": "binary"}}}}, **metadata_errors}),
            "parameters": [_MODEL, _VERSION, {"name": "name", "in": "path", "required": True, "schema": {
                "enum": ["confusion.png", "training_curves.png", "learning_curve.png", "reliability.png"]}}]}},
        "/openapi.json": {"get": _operation("openapi", "This document",
                                            {"200": _json({"type": "object"}, "the OpenAPI document"),
                                             "401": _ERRORS["401"]})},
    }
    paths.update(_versioned("/v2/models/{model}", {"get": _operation(
        "modelMetadata", "A model's tensors and labels (Open Inference Protocol)",
        {"200": _json(_ref("ModelMetadata"), "model metadata"), **metadata_errors})}))
    paths.update(_versioned("/v2/models/{model}/ready", {"get": _operation(
        "modelReady", "Whether a model (version) takes traffic", {
            "200": _json(_ref("ModelReady"), "ready"),
            "400": _json({"oneOf": [_ref("ModelReady"), _ref("Error")]}, "draining, or a malformed version"),
            "404": _json(_ref("ModelReady"), "not served"), "401": _ERRORS["401"]})}))
    paths.update(_versioned("/v2/models/{model}/infer", {"post": _operation(
        "modelInfer", "Classify texts (Open Inference Protocol; Triton's binary data extension also accepted)",
        {"200": _json(_ref("InferResponse"), "probabilities and labels"), **_ERRORS}, _ref("InferRequest"))}))
    paths.update(_versioned("/v1/models/{model}", {"get": _operation(
        "getModel", "One model version (tlserve.v1 GetModel)",
        {"200": _json(_ref("ModelInfo"), "the model"), **metadata_errors})}))
    paths.update(_versioned("/v1/models/{model}:classify", {"post": _operation(
        "classify", "Classify texts (tlserve.v1 Classify)",
        {"200": _json(_ref("ClassifyResponse"), "labels by decreasing probability per text"), **_ERRORS},
        _ref("ClassifyRequest"))}))
    return {
        "openapi": "3.1.0",
        "info": {"title": "tlserve", "version": __version__,
                 "description": "Text classification over HTTP/JSON beside gRPC: the Open Inference Protocol's "
                                "REST binding (/v2) and the JSON mirror of tlserve.v1 (/v1)."},
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def _schemas() -> dict[str, Any]:
    string_list = {"type": "array", "items": {"type": "string"}}
    uint64 = {"type": "string", "pattern": "^[0-9]+$", "description": "a uint64, as a string (proto3 JSON)"}
    parameters = {"type": "object", "additionalProperties": {"type": ["string", "integer", "boolean", "number"]}}
    tensor_metadata = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": parameters}}
    return {
        "Stats": {"type": "object", "required": ["models"], "properties": {"models": {
            "type": "object", "additionalProperties": {"type": "object", "properties": {
                "calls": {"type": "number"}, "failed": {"type": "number"},
                "latency": {"type": "object", "properties": {
                    "bounds": {"type": "array", "items": {"type": "number"}},
                    "cumulative": {"type": "array", "items": {"type": "number"}}}},
                "batch_sum": {"type": "number"}, "batches": {"type": "number"},
                "tokens": {"type": "number"}, "oov_tokens": {"type": "number"}}}}}},
        "Error": {"type": "object", "required": ["error", "code"], "properties": {
            "error": {"type": "string", "description": "what was wrong, naming the field or limit"},
            "code": {"type": "string", "description": "the gRPC status of the same error"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "extensions": string_list}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}},
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "versions": string_list, "platform": {"type": "string"},
            "inputs": {"type": "array", "items": tensor_metadata},
            "outputs": {"type": "array", "items": tensor_metadata}, "parameters": parameters}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": parameters,
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "shape", "datatype"], "properties": {
                    "name": {"const": "text"}, "datatype": {"const": "BYTES"},
                    "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer",
                                                                                      "minimum": 0}},
                    "parameters": parameters,
                    "data": string_list}}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"enum": ["probabilities", "label", "explanation"]}, "parameters": parameters}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape"], "properties": {
                    "name": {"type": "string"}, "datatype": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": parameters,
                    "data": {"type": "array", "items": {"type": ["number", "string"]}}}}}}},
        "ClassifyRequest": {"type": "object", "required": ["texts"], "properties": {
            "model": {"type": "string", "description": "optional; the path names the model"},
            "version": uint64, "texts": string_list,
            "topK": {"type": "integer", "minimum": 0, "description": "labels per text (0: all)"},
            "requestId": {"type": "string"},
            "explain": {"type": "integer", "minimum": 0, "maximum": 64,
                        "description": "words to explain per text (0: none); at most 32 texts then"}}},
        "ClassifyResponse": {"type": "object", "required": ["model", "results"], "properties": {
            "model": {"type": "string"}, "version": uint64, "requestId": {"type": "string"},
            "results": {"type": "array", "items": {"type": "object", "properties": {
                "labels": {"type": "array", "items": {"type": "object", "required": ["label"], "properties": {
                    "label": {"type": "string"}, "probability": {"type": "number"}}}},
                "tokenCount": {"type": "integer"}, "oovFraction": {"type": "number"},
                "explanation": {"type": "object", "required": ["label"], "properties": {
                    "label": {"type": "string"}, "words": {"type": "array", "items": {
                        "type": "object", "required": ["word"], "properties": {
                            "word": {"type": "string"}, "contribution": {"type": "number"},
                            "count": {"type": "integer"}}}}}}}}}}},
        "ModelInfo": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "version": uint64, "versions": {"type": "array", "items": uint64},
            "labels": string_list, "mode": {"type": "string"},
            "limits": {"type": "object"}, "vectorStore": {"type": "object"},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
            "createdAt": {"type": "string"}}},
        "ListModelsResponse": {"type": "object", "properties": {
            "models": {"type": "array", "items": {"$ref": "#/components/schemas/ModelInfo"}}}},
    }
