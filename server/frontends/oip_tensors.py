"""The Open Inference Protocol's tensors for tlserve's models, shared by its gRPC and REST bindings.

Each model has one input and three outputs: ``text`` (BYTES, UTF-8), ``probabilities`` (FP32,
[n, labels]), ``label`` (BYTES, the most probable label) and, only when asked for by name,
``explanation`` (BYTES, per text the JSON of tlserve.v1's Explanation: the words the top label
owes most; its parameter ``explain`` = N words, 5 if not given). BYTES elements travel in the
protocol's raw form (a 4-byte little-endian length before each element) in gRPC's
``raw_input_contents`` and in the REST binding's binary data extension alike.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.server.core.dataplane import ModelDescription
from tlserve.server.core.errors import ErrorCode, ServingError

INPUT = "text"
PROBABILITIES = "probabilities"
LABEL = "label"
EXPLANATION = "explanation"
OUTPUTS = (PROBABILITIES, LABEL)
"""What a request that names no output gets."""
NAMED_OUTPUTS = (*OUTPUTS, EXPLANATION)
"""Every output a request may name (an explanation costs a scoring per word: only when named)."""
EXPLAIN_DEFAULT = 5
PLATFORM = "tlserve_onnx"
_INVALID = ErrorCode.INVALID_ARGUMENT
_LENGTH = struct.Struct("<I")


def split_bytes_tensor(raw: bytes, where: str, count: int) -> list[bytes]:
    """The `count` elements of a BYTES tensor in the protocol's raw form (each a uint32 LE length and its
    bytes); more or fewer is an error, found without reading past the `count`-th."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise ServingError(_INVALID, f"{where}: the shape says {count} texts but more follow (offset "
                                         f"{offset} of {len(raw)} bytes)")
        if offset + 4 > len(raw):
            raise ServingError(_INVALID, f"{where}: {len(raw) - offset} stray bytes at offset {offset}; each "
                                         "BYTES element is a 4-byte little-endian length and that many bytes")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ServingError(_INVALID, f"{where}: element {len(elements)} says {size} bytes at offset "
                                         f"{offset - 4} but only {len(raw) - offset} remain")
        elements.append(raw[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise ServingError(_INVALID, f"{where}: the shape says {count} texts but {len(elements)} were sent")
    return elements


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int = 0
    """Triton's classification extension: the k best "probability:index:label" strings (0 = off)."""
    explain: int = 0
    """For the explanation output: words per text."""


def answer_needs(outputs: list[tuple[RequestedOutput, bool]]) -> tuple[int, int]:
    """What a call's answer needs: labels per text (the largest classification asked for, else the top one),
    and words to explain per text (what the explanation output asks for; 0 if it is not requested)."""
    labels = max((output.classification for output, _ in outputs), default=0) or 1
    return labels, max((output.explain for output, _ in outputs), default=0)


def _string(value: str) -> v2.InferParameter:
    return v2.InferParameter(string_param=value)


def model_metadata(model: ModelDescription) -> v2.ModelMetadataResponse:
    tensor = v2.ModelMetadataResponse.TensorMetadata
    labels = json.dumps(model.labels, ensure_ascii=False)
    return v2.ModelMetadataResponse(
        name=model.name,
        versions=[str(v) for v in model.versions],
        platform=PLATFORM,
        # content_type "str" is how MLServer's codecs recognise UTF-8 text.
        inputs=[tensor(name=INPUT, datatype="BYTES", shape=[-1], parameters={"content_type": _string("str")})],
        outputs=[
            tensor(name=PROBABILITIES, datatype="FP32", shape=[-1, len(model.labels)],
                   parameters={"labels": _string(labels)}),
            tensor(name=LABEL, datatype="BYTES", shape=[-1], parameters={"content_type": _string("str")}),
            tensor(name=EXPLANATION, datatype="BYTES", shape=[-1],
                   parameters={"content_type": _string("str"), "on_request": _string(
                       "name it in outputs, with parameter explain = words per text (default 5)")}),
        ],
        parameters={
            "labels": _string(labels),
            "version": _string(str(model.version)),
            "mode": _string(model.mode),
            "max_texts_per_request": v2.InferParameter(int64_param=model.limits["max_texts_per_request"]),
            "max_text_bytes": v2.InferParameter(int64_param=model.limits["max_text_bytes"]),
        },
    )
