"""Giving memory back after a burst.

A burst of large requests leaves the process's heap full of freed chunks: glibc's malloc
keeps them (in several arenas, one per thread that allocated) instead of returning them to
the system, so RSS stays at the burst's peak long after it. Two remedies, both glibc's own:

- `tune_allocator` (at start-up): allocations of 1 MiB and more always get their own mapping,
  returned to the system when freed (glibc otherwise raises that threshold after freeing a
  large block, so a burst's 16 MB request buffers end up in the heap and stay), and at most
  two arenas per process (fewer half-empty heaps);
- `HeapTrimmer` (when the event loop idles, at most once a second): if RSS is more than a
  threshold above its level after the last trim, a full garbage collection (a burst's large
  objects can be held by reference cycles, which a quiet process would not collect for a long
  time) and ``malloc_trim(0)``, in a thread, return every whole free page of every arena.

Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from tlserve.core.process_memory import glibc as _glibc
from tlserve.core.process_memory import resident_bytes

_LOGGER = logging.getLogger(__name__)


_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def tune_allocator() -> None:
    """See the module docstring; call before the server's threads start."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)


class HeapTrimmer:
    """Returns free heap pages to the system after RSS grew by `threshold_bytes` (see the module)."""

    def __init__(self, threshold_bytes: int = 32 << 20, interval_seconds: float = 1.0,
                 retry_seconds: float = 2.0) -> None:
        self.threshold = threshold_bytes
        self.interval = interval_seconds
        self.retry = retry_seconds
        self._libc = _glibc()
        self._low = resident_bytes()  # the lowest RSS seen after a trim (or at start)
        self._next_check = 0.0
        self._next_trim = 0.0
        self._settle_at = 0.0  # one more trim once a burst is over (see _trim)
        self._trimming = False
        self.trims = 0
        """How many trims ran (for tests and logs)."""

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next_check or self._trimming or self._libc is None:
            return
        self._next_check = now + self.interval
        settle = 0.0 < self._settle_at <= now
        if not settle and (now < self._next_trim or resident_bytes() - self._low < self.threshold):
            return
        self._settle_at = 0.0
        self._next_trim = now + self.retry
        self._trimming = True
        threading.Thread(target=self._trim, name="heap-trim", daemon=True).start()

    def _trim(self) -> None:
        try:
            before = resident_bytes()
            gc.collect()
            assert self._libc is not None
            self._libc.malloc_trim(0)
            after = resident_bytes()
            self.trims += 1
            _LOGGER.debug("gc + malloc_trim: RSS %.0f -> %.0f MB", before / 2**20, after / 2**20)
            # What is still held is in use: the next trim waits until RSS grows past it again,
            # except once more a little later when this one freed much (a burst ending: the last
            # requests' memory is freed after it).
            self._low = after
            if before - after >= self.threshold:
                self._settle_at = time.monotonic() + self.retry
        finally:
            self._trimming = False
