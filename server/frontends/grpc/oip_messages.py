"""The Open Inference Protocol's gRPC answer: ModelInferResponse from the serving core's `RankedAnswer`."""

from __future__ import annotations

from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.server.core.dataplane import RankedAnswer
from tlserve.server.frontends.oip_answers import output_tensors
from tlserve.server.frontends.oip_tensors import RequestedOutput


def infer_response(request_id: str, outputs: list[tuple[RequestedOutput, bool]],
                   answer: RankedAnswer) -> v2.ModelInferResponse:
    """The requested outputs, raw (``raw_output_contents``) or in ``contents`` as each asks."""
    response = v2.ModelInferResponse(model_name=answer.model, model_version=str(answer.version), id=request_id)
    for tensor in output_tensors(answer, outputs):
        message = response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if tensor.raw is not None:
            response.raw_output_contents.append(tensor.raw)
        elif tensor.datatype == "FP32":
            message.contents.fp32_contents.extend(tensor.values)
        else:
            message.contents.bytes_contents.extend(tensor.values)
    return response
