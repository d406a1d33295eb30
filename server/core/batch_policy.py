"""Which queued chunks form the next batch: the batcher's fairness, and its queue's room.

Calls take turns: each batch first takes the first chunk of calls that have had nothing run
yet (up to half the batch), then one chunk per waiting call in turn, so a one-text call is never
stuck behind the many chunks of a large request. The requests of one flow (a stream's) queue
behind each other and take one turn together. A chunk whose caller went away, or whose deadline
passed, leaves the queue without running.
"""

from __future__ import annotations

from collections import deque

from tlserve.server.core.batch_requests import Chunk
from tlserve.server.core.errors import ErrorCode, ServingError


class Caller:
    """The chunks still queued of one request, or of the requests of one flow (a stream), in order."""

    __slots__ = ("chunks", "flow")

    def __init__(self, chunks: list[Chunk], flow: object | None) -> None:
        self.chunks = deque(chunks)
        self.flow = flow


class TurnQueue:
    """The queued chunks of one model version's calls, in turns; counts the texts they hold."""

    def __init__(self) -> None:
        self.fresh: deque[Caller] = deque()  # calls none of whose texts ran yet
        self.rotating: deque[Caller] = deque()  # calls taking turns for their remaining chunks
        self.flows: dict[object, Caller] = {}  # flows with chunks queued
        self.texts = 0

    def __bool__(self) -> bool:
        return bool(self.fresh or self.rotating)

    def add(self, chunks: list[Chunk], flow: object | None) -> None:
        queued = self.flows.get(flow) if flow is not None else None
        if queued is not None:
            queued.chunks.extend(chunks)  # behind the flow's earlier requests, in its turn
        else:
            caller = Caller(chunks, flow)
            self.fresh.append(caller)
            if flow is not None:
                self.flows[flow] = caller
        self.texts += sum(len(chunk.texts) for chunk in chunks)

    def drop(self, chunks: list[Chunk]) -> None:
        """Releases the room of a cancelled call's chunks at once (their texts no longer count); they are
        skipped when their turn comes."""
        for chunk in chunks:
            chunk.future.cancel()
            if not chunk.taken and not chunk.dropped:
                chunk.dropped = True
                self.texts -= len(chunk.texts)
                chunk.texts = []  # the texts' memory goes with the caller

    def oldest(self) -> float:
        """When the longest-waiting queued chunk was queued."""
        return min(callers[0].chunks[0].enqueued for callers in (self.fresh, self.rotating) if callers)

    def take(self, max_texts: int, max_chars: int, now: float) -> list[Chunk]:
        """The next batch: new calls' first chunks (up to half the batch), then one chunk per call in turn."""
        batch: list[Chunk] = []
        room = [max_texts, max_chars]

        def take_from(callers: deque[Caller], texts_limit: int) -> None:
            while callers:
                caller = callers[0]
                chunk = caller.chunks[0]
                if batch and not chunk.dropped and (len(chunk.texts) > min(room[0], texts_limit)
                                                    or chunk.chars > room[1]):
                    return
                callers.popleft()
                caller.chunks.popleft()
                if caller.chunks:
                    self.rotating.append(caller)  # its next chunk waits for the others' turn
                elif caller.flow is not None:
                    del self.flows[caller.flow]
                chunk.taken = True
                if chunk.dropped:  # its texts left the count when its caller went away
                    continue
                self.texts -= len(chunk.texts)
                if chunk.future.done():
                    continue
                if chunk.deadline is not None and now > chunk.deadline:
                    chunk.future.set_exception(ServingError(
                        ErrorCode.DEADLINE_EXCEEDED, "deadline passed while queued; the work was dropped"))
                    continue
                batch.append(chunk)
                room[0] -= len(chunk.texts)
                room[1] -= chunk.chars
                texts_limit -= len(chunk.texts)

        take_from(self.fresh, max_texts // 2)
        take_from(self.rotating, max_texts)
        take_from(self.fresh, max_texts)
        return batch
