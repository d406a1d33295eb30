"""The batcher's load signal: a metered event loop, gathering while it is busy, direct runs when idle."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

from tlserve.core.scorer import Prediction
from tlserve.server.core import loop_idle
from tlserve.server.core.batching import DynamicBatcher

from conftest import BatchRecorder, make_batcher


def test_gathering_lasts_while_events_are_ready_and_ends_when_the_loop_runs_out() -> None:
    """gRPC's poller thread wakes the loop through a file descriptor: a socket pair plays it."""

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        gathering: asyncio.Future[None] = loop.create_future()
        loop_idle.METER.gathering.add(gathering)
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        rounds, done_at = 0, -1

        def readable() -> None:  # each event makes the next one: the loop is never out of work
            nonlocal rounds, done_at
            reader.recv(16)
            rounds += 1
            if gathering.done() and done_at < 0:
                done_at = rounds
            if rounds < 200:
                writer.send(b"x")

        loop.add_reader(reader.fileno(), readable)
        writer.send(b"x")
        await gathering
        loop.remove_reader(reader.fileno())
        reader.close()
        writer.close()
        return rounds, done_at

    rounds, done_at = loop_idle.run(main())
    assert rounds == 200 and done_at == -1, "the gathering ended while events were still arriving"


def test_idle_waits_are_counted_only_when_the_loop_blocks() -> None:
    async def main() -> tuple[int, int]:
        before = loop_idle.METER.waits
        for _ in range(50):
            await asyncio.sleep(0)  # busy: never blocks
        busy = loop_idle.METER.waits - before
        await asyncio.sleep(0.01)  # blocks ~10 ms
        return busy, loop_idle.METER.waits - before - busy

    busy, idle = loop_idle.run(main())
    assert busy == 0
    assert idle >= 1


# The gathering limit is far beyond what any of these batches needs: a batch that waited for it
# would make the test time out (wait_for below) instead of passing on a lucky schedule.
GATHER_LIMIT_US = 60_000_000


def _batcher(runtime: BatchRecorder) -> DynamicBatcher:
    return make_batcher(runtime, max_batch_size=64, max_queue_delay_us=0, max_queue_size=1024, inline_batch_texts=16,
                        adaptive_delay_us=GATHER_LIMIT_US)


def test_a_lone_call_on_an_idle_loop_runs_at_once_and_a_crowd_shares_batches() -> None:
    runtime = BatchRecorder()

    async def main() -> list[float]:
        batcher = _batcher(runtime)
        batcher.start()
        await asyncio.sleep(0.01)  # the loop idles: the next call finds the server idle
        alone = await batcher.submit(["abc"])
        assert alone.probabilities[0, 0] == 3.0
        assert alone.batches[0].queue_seconds == [0.0]  # ran in the calling task
        # 40 calls at once: they queue while the loop is busy taking them, then run in
        # batches as soon as the loop runs out of work, never at the gathering limit.
        answers = await asyncio.wait_for(asyncio.gather(*(batcher.submit(["x" * i]) for i in range(1, 41))), 30)
        await batcher.close()
        return [float(a.probabilities[0, 0]) for a in answers]

    lengths = loop_idle.run(main())
    assert runtime.batches[0] == ["abc"]
    assert lengths == [float(i) for i in range(1, 41)]  # each call got its own row back
    crowd = runtime.batches[1:]
    assert sum(len(b) for b in crowd) == 40
    assert len(crowd) <= 4, f"the crowd ran in {len(crowd)} batches: {[len(b) for b in crowd]}"


def test_without_a_metered_loop_gathering_ends_at_the_time_limit() -> None:
    runtime = BatchRecorder()

    async def main() -> float:
        batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_us=0, max_queue_size=1024,
                               inline_batch_texts=16, adaptive_delay_us=20_000)
        batcher.start()
        started = time.perf_counter()
        await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]))
        elapsed = time.perf_counter() - started
        await batcher.close()
        return elapsed

    elapsed = asyncio.run(main())  # a plain loop: nobody signals idleness
    # The first call finds the batcher idle and runs at once; the second gathers until
    # the time limit, as nothing tells it the loop ran out of work.
    assert runtime.batches == [["a"], ["b"]]
    assert elapsed >= 0.015


def test_calls_trickling_in_while_the_loop_is_busy_share_one_batch() -> None:
    """As gRPC hands calls over: one per loop turn. Without gathering each would be its own batch."""
    runtime = BatchRecorder()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        batcher = _batcher(runtime)
        batcher.start()
        calls: list[asyncio.Future[Prediction]] = []

        def arrive(i: int) -> None:
            calls.append(asyncio.ensure_future(batcher.submit([f"text {i}"])))
            if i < 30:
                loop.call_soon(arrive, i + 1)

        loop.call_soon(arrive, 1)
        while len(calls) < 30:
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*calls), 30)
        await batcher.close()
        return len(runtime.batches)

    batches = loop_idle.run(main())
    assert sum(len(b) for b in runtime.batches) == 30
    assert batches <= 3, f"30 trickling calls ran in {batches} batches: {[len(b) for b in runtime.batches]}"


def test_a_cancelled_call_gives_its_queue_room_back_at_once_and_never_runs() -> None:
    runtime = BatchRecorder()

    async def main() -> int:
        # Held for an hour: only a cancel or close() can move the queue.
        batcher = make_batcher(runtime, max_batch_size=64, max_queue_delay_us=3_600_000_000, max_queue_size=8)
        batcher.start()
        gone = asyncio.ensure_future(batcher.submit([f"gone {i}" for i in range(6)]))
        while batcher.queue.texts < 6:
            await asyncio.sleep(0)
        gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gone
        assert batcher.queue.texts == 0, "the cancelled call's texts still count as queued"
        # Without the room back, 6 + 6 texts would pass max_queue_size=8 and be refused.
        kept = asyncio.ensure_future(batcher.submit([f"kept {i}" for i in range(6)]))
        while batcher.queue.texts < 6 and not kept.done():
            await asyncio.sleep(0)
        assert not kept.done(), f"refused: {kept.exception()}"
        await batcher.close()  # runs what is queued at once
        return len((await kept).probabilities)

    assert asyncio.run(main()) == 6
    assert runtime.batches == [[f"kept {i}" for i in range(6)]], "the cancelled call's texts reached inference"
