"""tlserve.v1.Classifier: the native gRPC front end, a thin converter over the data plane.

Requests become texts and a model reference for `DataPlane.predict`; answers become
ClassifyResponse bytes written by `wire.ResponseEncoder` (one per served version, made on
its first call and dropped with the version).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator

import grpc

from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.scorer import Scorer
from tlserve.server.core import observe
from tlserve.server.core.dataplane import Answer, DataPlane
from tlserve.server.core.errors import ServingError
from tlserve.server.frontends.grpc_common import (
    MalformedRequest,
    add_tolerant_service,
    deadline_of,
    grpc_errors,
    metadata_of,
    status_of,
)
from tlserve.server.frontends.native_messages import model_info
from tlserve.server.frontends.wire import ResponseEncoder

_LOGGER = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Classifier"].full_name


def add_classifier_service(servicer: ClassifierServicer, server: grpc.aio.Server) -> None:
    """Registers tlserve.v1.Classifier."""
    add_tolerant_service(
        server,
        SERVICE,
        {
            "Classify": (servicer.Classify, pb.ClassifyRequest, pb.ClassifyResponse),
            "ListModels": (servicer.ListModels, pb.ListModelsRequest, pb.ListModelsResponse),
            "GetModel": (servicer.GetModel, pb.GetModelRequest, pb.ModelInfo),
        },
        {"ClassifyStream": (servicer.ClassifyStream, pb.ClassifyRequest, pb.ClassifyResponse)},
    )


class ClassifierServicer(pb_grpc.ClassifierServicer):
    """tlserve.v1.Classifier over the data plane."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self._streams = 0  # ClassifyStream calls open
        self._stream_texts = 0  # texts of all streams read and not yet answered
        self._stream_rooms: set[asyncio.Event] = set()  # streams waiting for room
        self._encoders: weakref.WeakKeyDictionary[Scorer, ResponseEncoder] = weakref.WeakKeyDictionary()

    def _response(self, answer: Answer, request: pb.ClassifyRequest) -> bytes:
        scorer, prediction = answer.scorer, answer.prediction
        encoder = self._encoders.get(scorer)
        if encoder is None:
            encoder = self._encoders[scorer] = ResponseEncoder(scorer.labels)
        return encoder.encode(scorer.name, scorer.version, prediction.probabilities, request.top_k,
                              prediction.token_counts.tolist(), prediction.oov_fractions.tolist(),
                              request.request_id)

    async def _classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext, method: str,
                        flow: object | None = None) -> bytes:
        with observe.observe_call(self.plane.model_label(request.model), request.version, method,
                                  lambda: metadata_of(context)) as call:
            answer = await self.plane.predict(request.model, request.version, request.texts, deadline_of(context),
                                              flow)
            call.version = answer.scorer.version
            started = time.perf_counter()
            response = self._response(answer, request)
            call.responded(answer.scorer.name, answer.prediction, len(request.texts), started)
            return response

    @grpc_errors
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> bytes:
        return await self._classify(request, context, "Classify")

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse | bytes]:
        # Requests are processed concurrently so a stream fills batches like many unary
        # calls do; responses are yielded in request order. Flow control: at most its share of
        # a batch's worth of texts (max_batch_size over the open streams) is read and not yet
        # taken by its client; a stream whose client stops reading answers stops being read
        # from (HTTP/2 then holds the client back), instead of the server classifying and
        # buffering answers nobody takes.
        window = self.plane.settings.max_batch_size
        flow = object()  # this stream's requests take one turn together in the batcher
        self._streams += 1
        in_flight = 0
        room = asyncio.Event()
        pending: asyncio.Queue[tuple[asyncio.Task[pb.ClassifyResponse | bytes], int] | None] = asyncio.Queue()

        async def one(request: pb.ClassifyRequest | MalformedRequest, size: int) -> pb.ClassifyResponse | bytes:
            try:
                if isinstance(request, MalformedRequest):
                    raise request.error()
                return await self._classify(request, context, "ClassifyStream", flow)
            except ServingError as exc:
                model, request_id = ("", "") if isinstance(request, MalformedRequest) else (request.model,
                                                                                            request.request_id)
                return pb.ClassifyResponse(model=model, request_id=request_id,
                                           error=pb.ErrorStatus(code=status_of(exc).value[0], message=exc.message))
            finally:
                self._stream_texts -= size
                for waiting in self._stream_rooms:
                    waiting.set()

        async def read() -> None:
            nonlocal in_flight
            try:
                requests = request_iterator.__aiter__()
                while True:
                    # All streams together keep about one batch of texts being classified (and each
                    # its share of it unanswered): 64 streams do not put thousands of messages
                    # ahead of a unary call on the event loop and in the batcher.
                    while in_flight >= max(1, window // self._streams) or self._stream_texts >= window:
                        room.clear()
                        self._stream_rooms.add(room)
                        try:
                            await room.wait()
                        finally:
                            self._stream_rooms.discard(room)
                    try:
                        request = await requests.__anext__()
                    except StopAsyncIteration:
                        return
                    size = 1 if isinstance(request, MalformedRequest) else max(1, len(request.texts))
                    in_flight += size
                    self._stream_texts += size
                    pending.put_nowait((asyncio.ensure_future(one(request, size)), size))
            finally:
                pending.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await pending.get()) is not None:
                task, size = item
                yield await task  # returns once the client has taken the answer (or gRPC buffered it)
                in_flight -= size
                room.set()
            await reader
        finally:
            self._streams -= 1
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover[0].cancel()

    @grpc_errors
    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info(self.plane, served.scorer) for served in self.plane.table])

    @grpc_errors
    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        return model_info(self.plane, self.plane.served(request.model, request.version).scorer)
