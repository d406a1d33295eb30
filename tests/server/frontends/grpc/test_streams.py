"""ClassifyStream reads no further ahead of its client than its share of a batch."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import (
    BatchRecorder,
    make_plane,
)


class _NoDeadline:
    """A servicer context without a deadline."""

    def time_remaining(self) -> None:
        return None


def _answering_plane() -> Any:
    """A data plane (max_batch_size 64) whose model answers every text at once: the stream's own logic alone."""
    return make_plane(BatchRecorder(), max_batch_size=64)


def test_a_stream_whose_client_does_not_read_stops_being_read() -> None:
    """The client sends 100 requests of 64 texts and takes one answer: the server reads no more
    than it has room to answer (one batch of texts), instead of classifying all 100."""
    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.server.core import loop_idle
    from tlserve.server.frontends.grpc.native import ClassifierServicer

    Context = _NoDeadline

    pulled = 0

    async def requests() -> Any:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield pb.ClassifyRequest(model="m", texts=[f"text {i}"] * 64)

    async def main() -> int:
        stream = ClassifierServicer(_answering_plane()).ClassifyStream(requests(), Context())  # type: ignore[arg-type]
        await stream.__anext__()  # one answer taken; then the client stops reading
        before = loop_idle.METER.waits
        while loop_idle.METER.waits < before + 3:  # the loop ran out of work: nothing more will happen
            await asyncio.sleep(0.001)
        await stream.aclose()
        return pulled

    assert loop_idle.run(main()) <= 2


def test_streams_share_one_batch_of_texts_in_flight() -> None:
    """A second stream that stops reading holds at most half a batch of one-text messages, not a whole one."""
    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.server.core import loop_idle
    from tlserve.server.frontends.grpc.native import ClassifierServicer

    Context = _NoDeadline

    pulled = {"a": 0, "b": 0}

    async def requests(name: str) -> Any:
        for i in range(500):
            pulled[name] += 1
            yield pb.ClassifyRequest(model="m", texts=[f"{name} {i}"])

    async def settle() -> None:
        before = loop_idle.METER.waits
        while loop_idle.METER.waits < before + 3:  # the loop ran out of work
            await asyncio.sleep(0.001)

    async def main() -> None:
        servicer = ClassifierServicer(_answering_plane())
        first = servicer.ClassifyStream(requests("a"), Context())  # type: ignore[arg-type]
        await first.__anext__()
        await settle()
        second = servicer.ClassifyStream(requests("b"), Context())  # type: ignore[arg-type]
        await second.__anext__()
        await settle()
        await first.aclose()
        await second.aclose()

    loop_idle.run(main())
    assert pulled["a"] <= 64 + 2  # alone: a batch's worth
    assert pulled["b"] <= 32 + 2, pulled  # beside it: half
