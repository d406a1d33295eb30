"""The Open Inference Protocol's output tensors of an answer, shared by its gRPC and REST bindings.

`output_tensors` builds every requested output once, in the form the binding sends: raw bytes
(gRPC's ``raw_output_contents``, REST's binary data extension) or a list of values (gRPC's
``contents``, REST's ``"data"``). The bindings only wrap them in their own messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from tlserve.server.core.dataplane import RankedAnswer
from tlserve.server.frontends.explanation_json import explanation_json
from tlserve.server.frontends.oip_tensors import EXPLANATION, PROBABILITIES, RequestedOutput

_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    """FP32 (probabilities) or BYTES (labels, classification strings, explanations)."""
    shape: list[int]
    raw: bytes | None
    """The tensor in the protocol's raw form (set when the output goes back raw)."""
    values: list[float] | list[bytes] | None
    """The tensor's elements, row-major (set when it does not)."""


def join_bytes_tensor(elements: list[bytes]) -> bytes:
    """A BYTES tensor in the protocol's raw form: a uint32 little-endian length before each element."""
    return b"".join(_LENGTH.pack(len(element)) + element for element in elements)


def output_tensors(answer: RankedAnswer, outputs: list[tuple[RequestedOutput, bool]]) -> list[OutputTensor]:
    """Each requested output (with whether it goes back raw) of `answer`, in the order asked for."""
    probabilities = answer.probabilities
    n, n_labels = probabilities.shape
    labels = answer.labels.names
    tensors = []
    for output, raw in outputs:
        if output.classification:
            # Triton's classification extension: per text the k best "probability:index:label", best first.
            k = min(output.classification, answer.order.shape[1])
            order = answer.order[:, :k]
            values = np.take_along_axis(probabilities, order, axis=1)
            elements = [f"{p:f}:{j}:{labels[j]}".encode()
                        for row, probs in zip(order.tolist(), values.tolist(), strict=True)
                        for j, p in zip(row, probs, strict=True)]
            datatype, shape = "BYTES", [n, k]
        elif output.name == PROBABILITIES:
            blob = np.ascontiguousarray(probabilities, dtype="<f4").tobytes() if raw else None
            tensors.append(OutputTensor(output.name, "FP32", [n, n_labels], blob,
                                        None if raw else probabilities.ravel().tolist()))
            continue
        elif output.name == EXPLANATION:
            explanations = answer.explanations or []
            elements = [json.dumps(explanation_json(why), ensure_ascii=False).encode() for why in explanations]
            datatype, shape = "BYTES", [n]
        else:  # the most probable label of each text
            elements = [labels[j].encode() for j in answer.order[:, 0].tolist()]
            datatype, shape = "BYTES", [n]
        tensors.append(OutputTensor(output.name, datatype, shape, join_bytes_tensor(elements) if raw else None,
                                    None if raw else elements))
    return tensors
