"""What `tlserve train` tells its user while it runs: one line per stage, and nothing of its libraries.

A stage prints one line when it ends: its name, what it found and how long it took. On a
terminal, a stage that takes a while (a member's epochs) also keeps a line updated in place.
Library code reports through `current()`, which is silent unless a command turned reporting on
(`reporting`), so notebooks and tests see nothing they did not ask for.

TensorFlow writes its C++ log straight to the process's standard error, past Python's logging:
the commands run training inside `tlserve.core.native_logs.filtered_stderr`, unless ``--verbose``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any, TextIO

# Python loggers of the libraries training uses, and the level below which they are dropped.
_LIBRARY_LEVELS = {"tensorflow": logging.ERROR, "tf2onnx": logging.WARNING, "absl": logging.ERROR,
                   "h5py": logging.WARNING, "matplotlib": logging.WARNING, "jieba": logging.WARNING}


class Stage:
    """One stage of a run; `note` says what it found (shown when it ends), `update` shows how far it got."""

    def __init__(self, progress: Progress, name: str) -> None:
        self.progress = progress
        self.name = name
        self.detail = ""
        self.started = time.perf_counter()

    def note(self, detail: str) -> None:
        self.detail = detail

    def update(self, status: str) -> None:
        self.progress.live(f"{self.name:<24} {status}")


class Progress:
    """Prints stage lines to `stream` (nothing when `stream` is None)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.live_line = stream is not None and stream.isatty()
        self._shown = False

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        stage = Stage(self, name)
        yield stage
        self.line(f"{name:<24} {stage.detail}".rstrip() + f"  ({time.perf_counter() - stage.started:.1f} s)")

    def line(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(("\r\x1b[K" if self._shown else "") + text + "\n")
        self.stream.flush()
        self._shown = False

    def live(self, text: str) -> None:
        if self.stream is None or not self.live_line:
            return
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True


_CURRENT = Progress(None)


def current() -> Progress:
    """The reporter of the running command (silent outside one)."""
    return _CURRENT


@contextlib.contextmanager
def reporting(progress: Progress) -> Iterator[Progress]:
    global _CURRENT
    previous, _CURRENT = _CURRENT, progress
    try:
        yield progress
    finally:
        _CURRENT = previous


def quiet_libraries() -> None:
    """Drops the libraries' Python log records below their level (see `_LIBRARY_LEVELS`), and TensorFlow's
    own C++ INFO and WARNING lines where it still reads the old variable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, level in _LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)


def keras_epochs(stage: Stage, epochs: int) -> Any:
    """A Keras callback that shows the epoch and the validation accuracy so far on `stage`'s live line and
    notes the last one."""
    import keras

    class EpochProgress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            accuracy = logs.get("val_accuracy", logs.get("accuracy"))
            shown = f", validation accuracy {accuracy:.4f}" if accuracy is not None else ""
            stage.note(f"{epoch + 1} epochs{shown}")
            stage.update(f"epoch {epoch + 1} of at most {epochs}{shown}")

    return EpochProgress()
