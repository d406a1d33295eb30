"""When the event loop runs out of work: the batcher's signal of load.

A lone call on an idle server should run at once, while calls on a busy server should
queue and share batches. Time between calls cannot tell the two apart: gRPC hands calls
to Python one at a time, each costing a few hundred microseconds of the loop's own time,
so under any load calls reach the batcher as far apart as a lone caller's do. What does
differ is whether the loop runs out of work: a busy loop always has the next call's events
ready, an idle one blocks in its selector. `WaitTimingSelector` watches that moment:

- it counts blocking waits on `LoopIdleMeter.waits`, so a batcher can tell whether the loop
  idled since its last call (then a new call runs at once);
- when the loop would block and no event is ready, it resolves the futures in
  `LoopIdleMeter.gathering`: a batcher gathering calls into a batch runs it then, because
  waiting longer would only leave the loop idle; while the loop is busy receiving calls,
  the batch keeps growing. (Waiting even 20-50 µs more for gRPC's poller thread to hand
  over events made batches bigger but cost a fifth of the throughput at 4 callers.)

Work that may wait (`LoopIdleMeter.on_idle`, e.g. metric updates) runs at that moment too.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable
from typing import Any

# Blocking waits shorter than this are the gap between gRPC's poller thread and the loop
# under load, not idleness.
IDLE_WAIT_SECONDS = 50e-6


class LoopIdleMeter:
    """Counts the event loop's waits for work of at least `IDLE_WAIT_SECONDS`."""

    __slots__ = ("gathering", "on_idle", "waits")

    def __init__(self) -> None:
        self.waits = 0
        """Idle waits so far; compare two readings to learn whether the loop idled between them."""
        self.gathering: set[asyncio.Future[None]] = set()
        """Resolved when the loop has nothing else to do (see the module docstring)."""
        self.on_idle: list[Callable[[], None]] = []
        """Work that can wait until the loop has nothing else to do (deferred metric updates)."""


class WaitTimingSelector(selectors.DefaultSelector):
    """The platform's default selector, counting blocking waits on `meter`."""

    def __init__(self, meter: LoopIdleMeter) -> None:
        super().__init__()
        self._meter = meter

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        if self._meter.gathering:
            # Events ready now mean more calls to receive: the batches keep gathering.
            ready: list[tuple[selectors.SelectorKey, int]] = super().select(0)
            if ready:
                return ready
            for future in self._meter.gathering:
                if not future.done():
                    future.set_result(None)
            self._meter.gathering.clear()
            return []
        for work in self._meter.on_idle:
            work()
        started = time.perf_counter()
        events: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        if time.perf_counter() - started >= IDLE_WAIT_SECONDS:
            self._meter.waits += 1
        return events


METER = LoopIdleMeter()
"""The meter of the loop `new_event_loop` makes (one serving loop per process)."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop whose idle waits `METER` counts; pass to asyncio.run(loop_factory=...)."""
    return asyncio.SelectorEventLoop(WaitTimingSelector(METER))


def run(main: Any) -> Any:
    """asyncio.run(main) on a metered loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
