"""Thin gRPC servicers over the data plane: calls in, statuses out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from tlserve.client.v1 import classifier_pb2 as pb
from tlserve.client.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.server.dataplane import DataPlane, ServingError
from tlserve.server.runtime import ModelRuntime

_LOGGER = logging.getLogger(__name__)


class MalformedRequest:
    """Stands in for a request whose bytes do not parse, so it gets INVALID_ARGUMENT, not UNKNOWN."""

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant_parser(message_type: type[Message]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}")

    return parse


Handler = Callable[..., Any]


def _serialize(response: Message | bytes) -> bytes:
    # The hot path hands over bytes it encoded itself (tlserve.server.encoding).
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_tolerant_service(server: grpc.aio.Server, service: str,
                         methods: dict[str, tuple[Handler, type[Message], type[Message]]],
                         streams: dict[str, tuple[Handler, type[Message], type[Message]]] | None = None) -> None:
    """Registers a service like the generated helpers do, but with parsers that never raise."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(method, _tolerant_parser(request), _serialize)
        for name, (method, request, _) in methods.items()
    }
    for name, (method, request, _) in (streams or {}).items():
        handlers[name] = grpc.stream_stream_rpc_method_handler(method, _tolerant_parser(request), _serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_classifier_service(servicer: ClassifierServicer, server: grpc.aio.Server) -> None:
    """Registers tlserve.v1.Classifier."""
    add_tolerant_service(
        server,
        pb.DESCRIPTOR.services_by_name["Classifier"].full_name,
        {
            "Classify": (servicer.Classify, pb.ClassifyRequest, pb.ClassifyResponse),
            "ListModels": (servicer.ListModels, pb.ListModelsRequest, pb.ListModelsResponse),
            "GetModel": (servicer.GetModel, pb.GetModelRequest, pb.ModelInfo),
        },
        {"ClassifyStream": (servicer.ClassifyStream, pb.ClassifyRequest, pb.ClassifyResponse)},
    )


async def refuse_malformed(request: Any, context: grpc.aio.ServicerContext) -> None:
    if isinstance(request, MalformedRequest):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    if remaining is None:
        return None
    return asyncio.get_running_loop().time() + remaining


def model_info(plane: DataPlane, runtime: ModelRuntime) -> pb.ModelInfo:
    manifest = runtime.bundle.manifest
    store = manifest["vector_store"]
    settings = plane.settings
    metrics = {k: float(v) for k, v in manifest.get("metrics", {}).items() if isinstance(v, int | float)}
    return pb.ModelInfo(
        name=runtime.name,
        version=runtime.version,
        versions=plane.repository.versions(runtime.name),
        labels=runtime.labels,
        mode=runtime.bundle.features.mode,
        limits=pb.InputLimits(
            max_texts_per_request=settings.max_texts_per_request,
            max_text_bytes=settings.max_text_bytes,
            max_tokens=runtime.bundle.preprocessing.max_tokens,
        ),
        vector_store=pb.VectorStoreInfo(
            fingerprint=store["fingerprint"], size=int(store["size"]), dimension=int(store["dimension"]),
            source=store.get("source_name", ""), shared=bool(store.get("shared", False)),
        ),
        metrics=metrics,
        created_at=manifest.get("created_at", ""),
    )


class ClassifierServicer(pb_grpc.ClassifierServicer):
    """tlserve.v1.Classifier."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
                       ) -> pb.ClassifyResponse | bytes:
        await refuse_malformed(request, context)
        try:
            return await self.plane.classify(request, deadline_of(context), "Classify")
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
            raise  # abort raises; this keeps type checkers content

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse | bytes]:
        # Requests are processed concurrently so a stream fills batches like many unary
        # calls do; responses are yielded in request order.
        pending: asyncio.Queue[asyncio.Task[pb.ClassifyResponse | bytes] | None] = asyncio.Queue(maxsize=256)

        async def one(request: pb.ClassifyRequest) -> pb.ClassifyResponse | bytes:
            if isinstance(request, MalformedRequest):
                return pb.ClassifyResponse(error=pb.ErrorStatus(code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                                                message=request.message))
            try:
                return await self.plane.classify(request, deadline_of(context), "ClassifyStream")
            except ServingError as exc:
                return pb.ClassifyResponse(model=request.model, request_id=request.request_id,
                                           error=pb.ErrorStatus(code=exc.code.value[0], message=exc.message))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await pending.put(asyncio.ensure_future(one(request)))
            finally:
                await pending.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await pending.get()) is not None:
                yield await task
            await reader
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ListModelsResponse:
        await refuse_malformed(request, context)
        return pb.ListModelsResponse(models=[model_info(self.plane, runtime) for runtime in self.plane.repository])

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.ModelInfo:
        await refuse_malformed(request, context)
        try:
            return model_info(self.plane, self.plane.runtime(request.model, request.version))
        except ServingError as exc:
            await context.abort(exc.code, exc.message)
            raise
