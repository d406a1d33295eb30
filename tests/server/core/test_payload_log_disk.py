"""The payload log on a disk that fills up: lines of a call are written whole or not at all.

The disk is full for real (the kernel's per-process file size limit, RLIMIT_FSIZE, refuses the
writes past it, partial writes included), in a process of its own; then the limit is lifted, as
space is freed, and the log must go on with whole lines that `tlserve train` reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tlserve.core.labelled import load_labelled

SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from tlserve.server.core.payload_log import PayloadLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
    path = Path(sys.argv[1])
    log = PayloadLog(path, rate=1.0)
    labels = ["yes", "no"]
    probabilities = np.array([[0.75, 0.25]] * 3, dtype=np.float32)
    counts, oov = np.ones(3, np.int32), np.zeros(3, np.float32)

    def calls(n, tag):
        for i in range(n):
            log.offer("m", 1, labels, [f"{tag} call {i} text {j} " + "x" * 40 for j in range(3)], probabilities,
                      counts, oov)
        assert log.flush(30)

    calls(5, "before")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 1500, hard))  # the disk fills up
    calls(20, "full")
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is freed
    calls(5, "after")
    log.close()
""")


def test_a_full_disk_never_leaves_half_a_line_and_the_log_goes_on_after(tmp_path: Path) -> None:
    path = tmp_path / "payload.jsonl"
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, timeout=120)
    data = path.read_bytes()
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().splitlines()]  # every line whole JSON
    texts = [record["text"] for record in records]
    assert sum(text.startswith("before") for text in texts) == 15
    assert sum(text.startswith("after") for text in texts) == 15
    written_while_full = sum(text.startswith("full") for text in texts)
    assert 0 < written_while_full < 60 and written_while_full % 3 == 0  # some calls, each whole
    for i, record in enumerate(records):  # as a person labelling the log would
        record["label"] = ("yes", "no")[i % 2]
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert len(load_labelled(relabelled).texts) == len(records)
