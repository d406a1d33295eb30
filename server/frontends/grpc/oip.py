"""The Open Inference Protocol (KServe V2) over gRPC: `inference.GRPCInferenceService`.

Clients written for Triton, MLServer or KServe call tlserve's models unchanged. The servicer
is a thin converter: tensors to texts, the same `DataPlane.classify` as tlserve.v1.Classifier
(limits, batching, ranking, call observation), the answer to tensors (`oip_messages`), errors
through the shared `grpc_errors` mapping.

Each model has one input and two outputs:
- `text`, BYTES, shape [-1] (or [-1, 1]): UTF-8 strings, in `raw_input_contents` (4-byte
  little-endian length before each element, as tritonclient sends them) or in
  `contents.bytes_contents`;
- `probabilities`, FP32, shape [-1, C], columns in the order of the model's labels;
- `label`, BYTES, shape [-1]: the most probable label.
Outputs come back the way the inputs came: raw when the request was raw (as Triton always
answers, and as tritonclient reads), in `contents` otherwise (readable by generic tools).
Triton's classification extension is honoured: a requested output with the parameter
`classification` = k answers k strings "probability:index:label" per text, best first.
"""

from __future__ import annotations

import logging
from functools import partial

import grpc

from tlserve import __version__
from tlserve.contract.oip import grpc_predict_v2_pb2 as v2
from tlserve.contract.oip import grpc_predict_v2_pb2_grpc as v2_grpc
from tlserve.server.core.dataplane import ClassifyCall, DataPlane
from tlserve.server.core.errors import ErrorCode, ServingError, too_many_texts
from tlserve.server.frontends import oip_tensors as tensors
from tlserve.server.frontends.grpc.common import add_tolerant_service, grpc_errors, metadata_of
from tlserve.server.frontends.grpc.oip_messages import infer_response

_LOGGER = logging.getLogger(__name__)

SERVICE = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ["classification"]
_INVALID = ErrorCode.INVALID_ARGUMENT


def texts_of(request: v2.ModelInferRequest, max_texts: int) -> list[str]:
    """The request's `text` input as strings; every error names the input, field or element. The count is
    checked against the limit from the shape, before any element is read."""
    names = [tensor.name for tensor in request.inputs]
    if names != [tensors.INPUT]:
        raise ServingError(_INVALID,
                           f"inputs are {names}; the model has one input, '{tensors.INPUT}' (BYTES, shape [-1])")
    tensor = request.inputs[0]
    where = f"inputs[0] '{tensors.INPUT}'"
    if tensor.datatype != "BYTES":
        raise ServingError(_INVALID, f"{where}: datatype is {tensor.datatype or 'empty'}; send BYTES (UTF-8 texts)")
    shape = list(tensor.shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
        raise ServingError(_INVALID, f"{where}: shape is {shape}; send [n] (or [n, 1]) for n texts")
    if shape[0] > max_texts:
        raise too_many_texts(f"{where}: shape {shape}", shape[0], max_texts)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise ServingError(_INVALID, f"raw_input_contents holds {len(request.raw_input_contents)} entries for "
                                         "1 input")
        if tensor.HasField("contents"):
            raise ServingError(_INVALID, f"{where}: both contents and raw_input_contents are set; send one")
        elements = tensors.split_bytes_tensor(request.raw_input_contents[0], "raw_input_contents[0]", shape[0])
    else:
        elements = list(tensor.contents.bytes_contents)
    if len(elements) != shape[0]:
        raise ServingError(_INVALID, f"{where}: shape {shape} says {shape[0]} texts but {len(elements)} were sent")
    texts = []
    for i, element in enumerate(elements):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ServingError(_INVALID, f"{where}: element {i} is not UTF-8 (byte {exc.start})") from None
    return texts


def requested_outputs(request: v2.ModelInferRequest) -> list[tuple[tensors.RequestedOutput, bool]]:
    """Each wanted output, with whether it goes back raw: as the inputs came."""
    raw = bool(request.raw_input_contents)
    if not request.outputs:
        return [(tensors.RequestedOutput(name), raw) for name in tensors.OUTPUTS]
    wanted = []
    for i, output in enumerate(request.outputs):
        if output.name not in tensors.NAMED_OUTPUTS:
            raise ServingError(_INVALID, f"outputs[{i}] '{output.name}': the model's outputs are "
                                         f"{list(tensors.NAMED_OUTPUTS)}")
        k = 0
        if "classification" in output.parameters:
            k = int(output.parameters["classification"].int64_param)
            if k <= 0:
                raise ServingError(_INVALID, f"outputs[{i}] '{output.name}': parameter classification must be "
                                             f"an int64 > 0, got {output.parameters['classification']}")
        words = 0
        if output.name == tensors.EXPLANATION:
            words = tensors.EXPLAIN_DEFAULT
            if "explain" in output.parameters:
                words = int(output.parameters["explain"].int64_param)
                if words <= 0:
                    raise ServingError(_INVALID, f"outputs[{i}] '{output.name}': parameter explain must be an "
                                                 f"int64 > 0, got {output.parameters['explain']}")
        wanted.append((tensors.RequestedOutput(output.name, k, words), raw))
    return wanted


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: v2.ServerLiveRequest, context: grpc.aio.ServicerContext
                         ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: v2.ServerReadyRequest, context: grpc.aio.ServicerContext
                          ) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self.plane.live_ready)

    @grpc_errors
    async def ModelReady(self, request: v2.ModelReadyRequest, context: grpc.aio.ServicerContext
                         ) -> v2.ModelReadyResponse:
        # A malformed version is INVALID_ARGUMENT; an unknown or not yet loaded model is simply not ready.
        return v2.ModelReadyResponse(ready=self.plane.is_ready(request.name, request.version))

    async def ServerMetadata(self, request: v2.ServerMetadataRequest, context: grpc.aio.ServicerContext
                             ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="tlserve", version=__version__, extensions=EXTENSIONS)

    @grpc_errors
    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context: grpc.aio.ServicerContext
                            ) -> v2.ModelMetadataResponse:
        return tensors.model_metadata(self.plane.describe(request.name, request.version))

    @grpc_errors
    async def ModelInfer(self, request: v2.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> v2.ModelInferResponse:
        try:
            texts = texts_of(request, self.plane.settings.max_texts_per_request)
            outputs = requested_outputs(request)
        except ServingError as exc:  # a request the core never sees is counted all the same
            self.plane.refused(request.model_name, "ModelInfer", exc)
            raise
        labels, words = tensors.answer_needs(outputs)
        call = ClassifyCall(request.model_name, request.model_version, texts, "ModelInfer", labels, request.id,
                            context.time_remaining(), lambda: metadata_of(context), version_field="model_version",
                            explain=words, explain_field="the explanation output's explain")
        return await self.plane.classify(call, partial(infer_response, request.id, outputs))

    async def RepositoryModelLoad(self, request: v2.RepositoryModelLoadRequest,
                                  context: grpc.aio.ServicerContext) -> v2.RepositoryModelLoadResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _REPOSITORY_HINT)
        raise AssertionError

    async def RepositoryModelUnload(self, request: v2.RepositoryModelUnloadRequest,
                                    context: grpc.aio.ServicerContext) -> v2.RepositoryModelUnloadResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, _REPOSITORY_HINT)
        raise AssertionError


_REPOSITORY_HINT = ("tlserve serves what its repository folder holds: publish a version there (tlserve train) "
                    "or remove one, and the server picks it up within --poll-seconds or on SIGHUP")


def add_inference_service(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Registers inference.GRPCInferenceService."""
    add_tolerant_service(server, SERVICE, {
        "ServerLive": (servicer.ServerLive, v2.ServerLiveRequest, v2.ServerLiveResponse),
        "ServerReady": (servicer.ServerReady, v2.ServerReadyRequest, v2.ServerReadyResponse),
        "ModelReady": (servicer.ModelReady, v2.ModelReadyRequest, v2.ModelReadyResponse),
        "ServerMetadata": (servicer.ServerMetadata, v2.ServerMetadataRequest, v2.ServerMetadataResponse),
        "ModelMetadata": (servicer.ModelMetadata, v2.ModelMetadataRequest, v2.ModelMetadataResponse),
        "ModelInfer": (servicer.ModelInfer, v2.ModelInferRequest, v2.ModelInferResponse),
        "RepositoryModelLoad": (servicer.RepositoryModelLoad, v2.RepositoryModelLoadRequest,
                                v2.RepositoryModelLoadResponse),
        "RepositoryModelUnload": (servicer.RepositoryModelUnload, v2.RepositoryModelUnloadRequest,
                                  v2.RepositoryModelUnloadResponse),
    })
