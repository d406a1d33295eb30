"""Native libraries' log lines kept off a command's standard error.

TensorFlow and Ray write their C++ logs (``I0000 ...`` and ``E0000 ...`` lines, absl's start-up
warning, ``[2026-12-07 05:47:32,474 W 13169 13169] gcs_client.cc:210: ...``) straight to the
process's file descriptor 2, past Python's logging. `filtered_stderr` passes descriptor 2 through
a pipe that drops those lines and keeps every other line, in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

# absl/glog (TensorFlow): a severity letter and MMDD; Ray: "[date time,ms SEVERITY pid tid] file.cc:line:".
NATIVE_LINE = re.compile(rb"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog|"
                         rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [IWEF] \d+ \d+\] )")


@contextlib.contextmanager
def filtered_stderr() -> Iterator[TextIO]:
    """Descriptor 2 through a filter that drops native log lines; yields a stream to the real standard
    error (for lines updated in place, which a line filter would hold back) and makes it `sys.stderr`."""
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to filter
        yield sys.stderr
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                if not NATIVE_LINE.match(line):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()
    real = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    previous = sys.stderr
    sys.stderr = real
    try:
        yield real
    finally:
        sys.stderr = previous
        with contextlib.suppress(Exception):
            previous.flush()
        os.dup2(saved, 2)  # the pipe's last writer goes: the pump reads to its end and stops
        thread.join(5)
        os.close(saved)
        real.close()
