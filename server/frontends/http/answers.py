"""Answers of the HTTP port's classifications, from the serving core's `RankedAnswer`: the JSON mirror's
ClassifyResponse and the Open Inference Protocol's inference response (JSON or binary tensors)."""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from tlserve.server.core.dataplane import RankedAnswer
from tlserve.server.frontends.explanation_json import explanation_json
from tlserve.server.frontends.http.json_bodies import dump_json, json_response
from tlserve.server.frontends.oip_answers import output_tensors
from tlserve.server.frontends.oip_tensors import RequestedOutput

HEADER_LENGTH = "Inference-Header-Content-Length"


def classify_response(answer: RankedAnswer) -> web.Response:
    return json_response(classify_json(answer))


def classify_json(answer: RankedAnswer) -> dict[str, Any]:
    """ClassifyResponse in protobuf's JSON mapping, built directly (no message objects on the hot path)."""
    labels = answer.labels.names
    # float32 as its shortest decimal (0.929932, not 0.9299319982528687), as protobuf's JSON printer
    # writes it: the same float once parsed, and the same text.
    values = answer.probabilities.astype(np.str_).tolist()
    fractions = answer.oov_fractions.astype(np.str_).tolist()
    results = []
    explanations = answer.explanations
    for i, (row, ranked, tokens, oov) in enumerate(zip(values, answer.order.tolist(), answer.token_counts.tolist(),
                                                       fractions, strict=True)):
        result: dict[str, Any] = {"labels": [{"label": labels[j], "probability": float(row[j])}
                                             if row[j] != "0.0" else {"label": labels[j]} for j in ranked]}
        if tokens:
            result["tokenCount"] = tokens
        if oov != "0.0":
            result["oovFraction"] = float(oov)
        if explanations is not None:
            result["explanation"] = explanation_json(explanations[i])
        results.append(result)
    body: dict[str, Any] = {"model": answer.model, "version": str(answer.version), "results": results}
    if answer.request_id:
        body["requestId"] = answer.request_id
    return body


def infer_response(request_id: str, outputs: list[tuple[RequestedOutput, bool]], answer: RankedAnswer
                   ) -> web.Response:
    """The inference response: tensors as JSON, or (binary data extension) a JSON header and the tensors."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in output_tensors(answer, outputs):
        tensor: dict[str, Any] = {"name": output.name, "datatype": output.datatype, "shape": output.shape}
        if output.raw is not None:
            tensor["parameters"] = {"binary_data_size": len(output.raw)}
            blobs.append(output.raw)
        elif output.datatype == "FP32":
            tensor["data"] = output.values
        else:
            tensor["data"] = [element.decode() for element in output.values]
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": answer.model, "model_version": str(answer.version), "outputs": tensors}
    if request_id:
        document["id"] = request_id
    if not blobs:
        return json_response(document)
    header = dump_json(document)
    return web.Response(body=b"".join([header, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(header))})
