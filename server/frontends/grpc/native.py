"""tlserve.v1.Classifier: the native gRPC front end, a thin converter over the data plane.

A request becomes a `ClassifyCall` for `DataPlane.classify`; the answer becomes ClassifyResponse
bytes written by `wire.ResponseEncoder` (one per served version, made on its first call and
dropped with the version).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.server.core.dataplane import ClassifyCall, DataPlane
from tlserve.server.core.errors import ServingError
from tlserve.server.frontends.grpc import wire
from tlserve.server.frontends.grpc.common import add_tolerant_service, grpc_errors, metadata_of, status_of
from tlserve.server.frontends.grpc.requests import MalformedRequest
from tlserve.server.frontends.native_messages import model_info

SERVICE = pb.DESCRIPTOR.services_by_name["Classifier"].full_name


def add_classifier_service(servicer: ClassifierServicer, server: grpc.aio.Server) -> None:
    """Registers tlserve.v1.Classifier."""
    add_tolerant_service(
        server,
        SERVICE,
        {
            "Classify": (servicer.Classify, pb.ClassifyRequest, bytes),
            "ListModels": (servicer.ListModels, pb.ListModelsRequest, pb.ListModelsResponse),
            "GetModel": (servicer.GetModel, pb.GetModelRequest, pb.ModelInfo),
        },
        {"ClassifyStream": (servicer.ClassifyStream, pb.ClassifyRequest, bytes)},
    )


class ClassifierServicer(pb_grpc.ClassifierServicer):
    """tlserve.v1.Classifier over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> bytes:
        call = ClassifyCall(request.model, request.version, request.texts, "Classify", request.top_k,
                            request.request_id, context.time_remaining(), lambda: metadata_of(context),
                            explain=request.explain)
        return await self.plane.classify(call, wire.encode)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        # Requests are answered concurrently and yielded in order; the core's stream admission says how
        # far ahead of its client the stream reads (`tlserve.server.core.streams`).
        admission = self.plane.streams.open()
        flow = object()  # this stream's requests take one turn together in the batcher
        pending: asyncio.Queue[tuple[asyncio.Task[bytes], int] | None] = asyncio.Queue()

        async def one(request: pb.ClassifyRequest | MalformedRequest, size: int) -> bytes:
            try:
                if isinstance(request, MalformedRequest):
                    raise request.error()
                call = ClassifyCall(request.model, request.version, request.texts, "ClassifyStream", request.top_k,
                                    request.request_id, context.time_remaining(), lambda: metadata_of(context), flow,
                                    explain=request.explain)
                return await self.plane.classify(call, wire.encode)
            except ServingError as exc:
                model, request_id = ("", "") if isinstance(request, MalformedRequest) else (request.model,
                                                                                            request.request_id)
                return pb.ClassifyResponse(model=model, request_id=request_id, error=pb.ErrorStatus(
                    code=status_of(exc).value[0], message=exc.message)).SerializeToString()
            finally:
                admission.answered(size)

        async def read() -> None:
            try:
                requests = request_iterator.__aiter__()
                while True:
                    await admission.room()  # before reading: a full stream leaves its messages in HTTP/2
                    try:
                        request = await requests.__anext__()
                    except StopAsyncIteration:
                        return
                    size = 1 if isinstance(request, MalformedRequest) else max(1, len(request.texts))
                    admission.read(size)
                    pending.put_nowait((asyncio.ensure_future(one(request, size)), size))
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                task, size = item
                yield await task  # returns once the client has taken the answer (or gRPC buffered it)
                admission.taken(size)
            await reader
        finally:
            admission.close()
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover[0].cancel()

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(model) for model in self.plane.describe_all()])

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return model_info(self.plane.describe(request.model, request.version))
