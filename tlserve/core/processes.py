"""Whether the process that wrote a folder is still running, from the process id in the folder's name.

Staging folders of `tlserve train` and the store copies of a server carry their writer's process
id, so what a killed writer left behind can be told from what one is still writing, and removed.
"""

from __future__ import annotations

import os
from pathlib import Path

_BOOT_TIME: float | None = None


def process_start(pid: int) -> float | None:
    """When process `pid` of this host started (seconds since the epoch), or None if there is none."""
    global _BOOT_TIME
    try:
        fields_after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if _BOOT_TIME is None:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                _BOOT_TIME = float(line.split()[1])
    ticks = int(fields_after_name[19])  # field 22 of /proc/PID/stat: start time in clock ticks
    return (_BOOT_TIME or 0.0) + ticks / os.sysconf("SC_CLK_TCK")


def writer_is_gone(pid: int, folder: Path) -> bool:
    """Whether the process `pid` that made `folder` has exited (a process id now held by a process started
    after the folder was made belongs to someone else)."""
    started = process_start(pid)
    try:
        created = folder.stat().st_mtime
    except OSError:
        return False  # removed meanwhile
    return started is None or started > created + 1.0
