"""The batcher under large requests: small calls never wait behind large ones, streams take one turn, a full
queue refuses before reading."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from conftest import (
    BatchRecorder,
    make_batcher,
    make_plane,
)

# --- large requests, fair queueing, streams that never read ------------------------------------------------------


def test_a_small_call_is_not_queued_behind_the_chunks_of_a_large_one() -> None:
    from tlserve.server.core import loop_idle

    recorder = BatchRecorder()
    batches = recorder.batches

    async def main() -> None:
        batcher = make_batcher(recorder, max_batch_size=64, max_queue_delay_us=1_000_000, max_queue_size=4096,
                               max_batch_chars=1 << 18)
        batcher.start()
        # Both calls are queued in the same loop turn, the large one first.
        large = asyncio.ensure_future(batcher.submit(["x" * 16_384] * 1023))
        small = asyncio.ensure_future(batcher.submit(["small"]))
        await asyncio.wait_for(asyncio.gather(large, small), 60)
        await batcher.close()

    loop_idle.run(main())
    first_with_small = next(i for i, batch in enumerate(batches) if "small" in batch)
    assert first_with_small == 0, f"the small call ran in batch {first_with_small} of {len(batches)}"
    assert max(sum(map(len, batch)) for batch in batches) <= 1 << 18  # the character budget held


def test_the_messages_of_a_stream_take_one_turn_beside_a_unary_call() -> None:
    """Two streams with 20 one-text messages queued each, then a unary call: the call runs in the first batch
    (one place per stream), not behind 40 messages counted as 40 callers."""
    from tlserve.server.core import loop_idle

    recorder = BatchRecorder()
    batches = recorder.batches

    async def main() -> None:
        batcher = make_batcher(recorder, max_batch_size=8, max_queue_delay_us=1_000_000, max_queue_size=4096)
        batcher.start()
        first, second = object(), object()
        calls = [asyncio.ensure_future(batcher.submit([f"{name}{i}"], flow=flow))
                 for name, flow in (("a", first), ("b", second)) for i in range(20)]
        calls.append(asyncio.ensure_future(batcher.submit(["unary"])))
        await asyncio.wait_for(asyncio.gather(*calls), 60)
        await batcher.close()

    loop_idle.run(main())
    assert "unary" in batches[0], batches
    assert batches[0][:3] == ["a0", "b0", "unary"] and batches[0][3:] == ["a1", "b1", "a2", "b2", "a3"]
    assert [t for b in batches for t in b if t.startswith("a")] == [f"a{i}" for i in range(20)]  # a flow keeps order


def test_a_small_call_runs_beside_a_large_batch_instead_of_after_it() -> None:
    """The inference thread holds a large batch (until the test opens its gate): a one-text call is answered
    meanwhile, on the event loop."""
    import threading

    from tlserve.core.scorer import Prediction
    from tlserve.server.core import loop_idle

    gate, large_started = threading.Event(), threading.Event()

    class Gated:
        name = "m"

        def predict(self, texts: list[str]) -> Prediction:
            if len(texts) > 1:
                large_started.set()
                assert gate.wait(60)
            n = len(texts)
            return Prediction(np.full((n, 2), 0.5, np.float32), np.ones(n, np.int32), np.zeros(n, np.float32), 0, 0)

    async def main() -> bool:
        batcher = make_batcher(Gated(), max_batch_size=64, max_queue_delay_us=0, max_queue_size=4096,
                               inline_batch_texts=4)
        batcher.start()
        large = asyncio.ensure_future(batcher.submit(["x" * 4096] * 8))
        while not large_started.is_set():
            await asyncio.sleep(0.001)
        small = await asyncio.wait_for(batcher.submit(["small"]), 30)
        answered_while_large_ran = not large.done()
        gate.set()
        await large
        await batcher.close()
        return answered_while_large_ran and small.probabilities.shape == (1, 2)

    try:
        assert loop_idle.run(main())
    finally:
        gate.set()


def test_a_request_refused_for_a_full_queue_is_refused_before_its_texts_are_read() -> None:
    """Callers retrying large requests against a full queue: each refusal must not cost reading its texts."""
    from collections.abc import Sequence

    from tlserve.server.core import loop_idle
    from tlserve.server.core.dataplane import ClassifyCall
    from tlserve.server.core.errors import ErrorCode, ServingError

    class CountedTexts(Sequence[str]):
        reads = 0

        def __len__(self) -> int:
            return 200

        def __getitem__(self, index: Any) -> Any:
            CountedTexts.reads += 1
            return ["text"] * len(range(200)[index]) if isinstance(index, slice) else "text"

    async def main() -> ServingError:
        recorder = BatchRecorder()
        batcher = make_batcher(recorder, max_batch_size=64, max_queue_delay_us=0, max_queue_size=256,
                               inline_batch_texts=4)
        # Not started: what is submitted stays queued.
        queued = asyncio.ensure_future(batcher.submit(["queued"] * 200))
        await asyncio.sleep(0)
        assert batcher.queue.texts == 200
        plane = make_plane(recorder, batcher)
        try:
            await plane.classify(ClassifyCall("m", 0, CountedTexts(), "Classify"), lambda answer: answer)
        except ServingError as exc:
            return exc
        finally:
            queued.cancel()
        raise AssertionError("a request past max_queue_size was accepted")

    error = loop_idle.run(main())
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED and "max_queue_size=256" in error.message
    assert CountedTexts.reads == 0
