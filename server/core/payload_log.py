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
(``tlserve_payload_log_dropped_total``); a call is never slowed or failed by the log.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import logging.handlers
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


class _LineFile(logging.handlers.RotatingFileHandler):
    """The stdlib's size-rotated file, writing preformatted lines; a failed write is counted, not printed."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        self.failed: OSError | None = None

    def handleError(self, record: logging.LogRecord) -> None:
        import sys

        error = sys.exc_info()[1]
        self.failed = error if isinstance(error, OSError) else OSError(str(error))
        if self.stream is not None:  # reopen on the next line: the disk may have room again
            with contextlib.suppress(OSError):
                self.stream.close()
            self.stream = None


class PayloadLog:
    """Samples calls and writes their texts and answers from a thread of its own."""

    def __init__(self, path: Path, rate: float, hash_texts: bool = False, max_bytes: int = 100 << 20,
                 backups: int = 5, seed: int | None = None) -> None:
        self.path = path
        self.rate = rate
        self.hash_texts = hash_texts
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue(QUEUE_SIZE)
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
            lines = self._lines(item)
            written = 0
            for line in lines:
                self._file.failed = None
                self._file.emit(logging.makeLogRecord({"msg": line}))
                if self._file.failed is not None:
                    self._warn(self._file.failed)
                    break
                written += 1
            if written:
                metrics.DEFERRED.add(metrics.count, metrics.PAYLOAD_LINES, written)
            if written < len(lines):
                metrics.DEFERRED.add(metrics.count, metrics.PAYLOAD_DROPPED.labels("write_error"),
                                     len(lines) - written)

    def _warn(self, error: OSError) -> None:
        now = time.monotonic()
        if now - self._warned_at >= _WARN_EVERY_SECONDS:
            self._warned_at = now
            _LOGGER.warning("payload log %s cannot be written (%s); dropping lines and serving on", self.path, error)
