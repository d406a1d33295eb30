"""The gRPC ceiling: a no-op grpc.aio server with tlserve's message shapes.

    python -m tlserve.bench.ceiling --port 50100 [--workers 2] [--labels 10]

It answers tlserve.v1.Classifier's Classify and ClassifyStream with a response of the same
size as tlserve's (one result per text, every label with a probability) without any model
work, from the same number of processes (forked, SO_REUSEPORT), so the difference to tlserve
is what tlserve's own work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator

import grpc

from tlserve.bench.peer_server import serve_until_signalled
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.server.settings import ServerSettings

_LOGGER = logging.getLogger(__name__)


class NoOpClassifier(pb_grpc.ClassifierServicer):
    """Answers every text with the same precomputed result."""

    def __init__(self, labels: int) -> None:
        self.result = pb.TextResult(
            labels=[pb.LabelProbability(label=f"noun.label{i}", probability=1.0 / labels) for i in range(labels)],
            token_count=8,
        )

    def _answer(self, request: pb.ClassifyRequest) -> pb.ClassifyResponse:
        return pb.ClassifyResponse(model=request.model, version=1, results=[self.result] * len(request.texts))

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        return self._answer(request)

    async def ClassifyStream(self, request_iterator: AsyncIterator[pb.ClassifyRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ClassifyResponse]:
        async for request in request_iterator:
            yield self._answer(request)


async def serve(port: int, labels: int, reuse_port: bool) -> None:
    # tlserve's own message limit (documented limits plus framing): with gRPC's default of 4 MB a
    # large request would be refused before Python sees it, and cost the no-op server nothing.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if reuse_port else 0),
                                      ("grpc.max_receive_message_length", ServerSettings().max_request_bytes)])
    # Only the methods the benchmark calls; the others answer UNIMPLEMENTED.
    pb_grpc.add_ClassifierServicer_to_server(NoOpClassifier(labels), server)  # type: ignore[abstract]
    await serve_until_signalled(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--labels", type=int, default=10)
    args = parser.parse_args()
    if args.workers == 1:
        asyncio.run(serve(args.port, args.labels, False))
        return
    children = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            asyncio.run(serve(args.port, args.labels, True))
            os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for _ in children:
        os.wait()


if __name__ == "__main__":
    main()
