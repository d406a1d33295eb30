"""Errors shown to users: each names what was wrong and where (file and line, field, limit)."""

from __future__ import annotations

from pathlib import Path


class TlserveError(Exception):
    """Base class of errors reported to the user without a traceback."""


class InputFileError(TlserveError):
    """A user's file is unreadable or malformed; the message names the file and line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class BundleError(TlserveError):
    """A model bundle or vector store is missing, partial, corrupt or inconsistent."""
