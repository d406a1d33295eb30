"""Admission of the requests of open streams: how far a stream reads ahead of what its client takes.

Requests of a stream are classified concurrently, so a stream fills batches as unary calls do,
and answered in order. All open streams together keep about one batch of texts
(`max_batch_size`) read and not yet answered, each stream its share of it read and not yet
taken by its client: 64 streams do not put thousands of messages ahead of a unary call, and a
stream whose client stops reading stops being read from (HTTP/2 then holds the client back),
instead of the server classifying and buffering answers nobody takes.
"""

from __future__ import annotations

import asyncio


class StreamWindow:
    """The texts all open streams may have read and not answered; `open` admits one stream."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.streams = 0
        self.texts = 0  # read and not yet answered, over all streams
        self._waiting: set[asyncio.Event] = set()

    def open(self) -> StreamAdmission:
        return StreamAdmission(self)

    def _wake(self) -> None:
        for waiting in self._waiting:
            waiting.set()


class StreamAdmission:
    """One open stream's admission; `close` when the stream ends."""

    def __init__(self, window: StreamWindow) -> None:
        self._window = window
        self._in_flight = 0  # read and not yet taken by this stream's client
        self._room = asyncio.Event()
        window.streams += 1

    async def room(self) -> None:
        """Waits until the stream may read its next request."""
        window = self._window
        while self._in_flight >= max(1, window.window // window.streams) or window.texts >= window.window:
            self._room.clear()
            window._waiting.add(self._room)
            try:
                await self._room.wait()
            finally:
                window._waiting.discard(self._room)

    def read(self, size: int) -> None:
        """The stream read a request of `size` texts."""
        self._in_flight += size
        self._window.texts += size

    def answered(self, size: int) -> None:
        """A request's answer is built: its texts leave every stream's count."""
        self._window.texts -= size
        self._window._wake()

    def taken(self, size: int) -> None:
        """The client took (or gRPC buffered) a request's answer: this stream may read more."""
        self._in_flight -= size
        self._room.set()

    def close(self) -> None:
        self._window.streams -= 1
