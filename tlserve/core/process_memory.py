"""This process's resident memory, and handing freed heap pages back to the system (glibc).

Shared by the server (after bursts of large requests) and the trainer (between the phases
of a training run, whose peaks come one after the other: fitting, ONNX conversion, the
parity check). Elsewhere than glibc, trimming does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def glibc() -> Any | None:
    """glibc, for malloc_trim and mallopt; None elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None  # not glibc: nothing to trim


def release_memory() -> None:
    """A full garbage collection, then every whole free page of every malloc arena back to the system."""
    gc.collect()
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
