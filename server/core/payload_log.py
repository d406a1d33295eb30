"""Sampled requests and answers as JSON lines, for drift analysis and relabelling.

With ``--payload-log PATH`` a share of the calls (``--payload-log-rate``, per call) is written,
one line per text, in the format ``tlserve train`` reads (JSONL with ``text`` and ``label``):

    {"time": "...", "model": "tickets", "version": 3, "text": "my invoice is wrong",
     "predicted": "billing", "probabilities": {"billing": 0.91, ...}, "token_count": 4,
     "oov_fraction": 0.0, "trace_id": "...", "label": null}

``label`` is for a person to fill in; ``tlserve train --data PATH --unlabelled skip`` trains on
the lines that have one (``--label-column predicted`` on the model's own answers). With
``--payload-log-hash`` the text is replaced by its SHA-256 (``text_sha256``), for logs that must
not hold what users wrote.

The request path only draws a random number and, for a sampled call, puts a reference to its
answer in a bounded queue; a thread formats and writes the lines (rotated by size). A full
queue, a full disk or a path that cannot be written drops lines and counts them
(``tlserve_payload_log_dropped_total``); a call is never slowed or failed by the log. The lines of
a call are written whole or not at all, so a full disk never leaves half a line; a file that
cannot be opened at start-up (a folder that does not exist) stops the server with its path.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.server.core import metrics

_LOGGER = logging.getLogger(__name__)

# Sampled calls waiting for the writer; beyond it, lines are dropped (a slow disk never backs up calls).
QUEUE_SIZE = 1024
_WARN_EVERY_SECONDS = 60.0


class _LineFile:
    """Appends whole lines to a file rotated by size (PATH.1, PATH.2, ...): the lines of one call are written
    in one piece or not at all. A write the disk cannot take whole (a full disk) is cut back to where it
    began, so the file never holds half a line, and the next write, once there is room, starts a line."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd: int | None = None
        self._size = 0
        self._open()  # now, so a folder that does not exist or cannot be written stops the start-up

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._size = os.fstat(self._fd).st_size
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _rotate(self) -> None:
        self.close()
        for i in range(self.backups - 1, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{i}")
            if source.exists():
                os.replace(source, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def write(self, data: bytes) -> None:
        """Appends `data` whole, or raises OSError having written none of it."""
        if self.backups and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        fd = self._open()
        start = self._size
        try:
            view = memoryview(data)
            while view:  # a short write (the disk filled up) is followed by one that fails
                view = view[os.write(fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            self.close()  # reopened for the next call: the disk may have room then
            raise
        self._size = start + len(data)


class PayloadLog:
    """Samples calls and writes their texts and answers from a thread of its own."""

    def __init__(self, path: Path, rate: float, hash_texts: bool = False, max_bytes: int = 100 << 20,
                 backups: int = 5, seed: int | None = None) -> None:
        self.path = path
        self.rate = rate
        self.hash_texts = hash_texts
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[Any, ...] | threading.Event | None] = queue.Queue(QUEUE_SIZE)
        self._file = _LineFile(path, max_bytes, backups)
        self._warned_at = 0.0
        self._thread = threading.Thread(target=self._write_all, name="payload-log", daemon=True)
        self._thread.start()

    def offer(self, name: str, version: int, labels: list[str], texts: Sequence[str], probabilities: np.ndarray,
              token_counts: np.ndarray, oov_fractions: np.ndarray, trace_id: str = "") -> None:
        """Queues the call with probability `rate` (on the event loop: no formatting, no I/O)."""
        if self._random.random() >= self.rate:
            return
        try:
            self._queue.put_nowait((time.time(), name, version, labels, texts, probabilities, token_counts,
                                    oov_fractions, trace_id))
        except queue.Full:
            metrics.DEFERRED.add(metrics.count, metrics.PAYLOAD_DROPPED.labels("queue_full"), len(texts))

    def flush(self, timeout: float = 5.0) -> bool:
        """Waits until what was queued before is written (or dropped); False if `timeout` passed first."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued (within `timeout`) and closes the file."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._file.close()

    def _lines(self, item: tuple[Any, ...]) -> list[str]:
        at, name, version, labels, texts, probabilities, token_counts, oov_fractions, trace_id = item
        stamp = datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")
        best = probabilities.argmax(axis=1).tolist()
        lines = []
        for i, text in enumerate(texts):
            record: dict[str, Any] = {"time": stamp, "model": name, "version": version}
            if self.hash_texts:
                record["text_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            else:
                record["text"] = text
            record["predicted"] = labels[best[i]]
            record["probabilities"] = {label: round(float(p), 6) for label, p in zip(labels, probabilities[i],
                                                                                    strict=True)}
            record["token_count"] = int(token_counts[i])
            record["oov_fraction"] = round(float(oov_fractions[i]), 6)
            if trace_id:
                record["trace_id"] = trace_id
            record["label"] = None
            lines.append(json.dumps(record, ensure_ascii=False))
        return lines

    def _write_all(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            lines = self._lines(item)
            try:
                self._file.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
            except OSError as error:
                self._warn(error)
                metrics.DEFERRED.add(metrics.count, metrics.PAYLOAD_DROPPED.labels("write_error"), len(lines))
            else:
                metrics.DEFERRED.add(metrics.count, metrics.PAYLOAD_LINES, len(lines))

    def _warn(self, error: OSError) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            _LOGGER.warning("payload log %s cannot be written (%s); dropping lines and serving on", self.path, error)
