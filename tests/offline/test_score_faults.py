"""`tlserve score` on bad input and under signals: a stray CSV quote is reported as `tlserve train` reports
it, a killed job's leftovers are removed by the next run, SIGTERM stops cleanly. Tiny models, real
processes (the signals are the subject).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq

from conftest import ROOT, tiny_repository, wait_until
from tiny_models import sample_texts


def _score(repository: Path, source: Path, out: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score", "--model",
                             str(repository / "tiny"), "--input", str(source), "--output", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _big_input(path: Path, rows: int = 300_000) -> Path:
    texts = sample_texts()
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"text": texts[i % len(texts)]}) + "\n")
    return path


def test_a_stray_quote_is_reported_with_its_line_and_rows_are_numbered_from_the_first_data_row(
        tiny_store: Path, tmp_path: Path) -> None:
    repository = tiny_repository(tmp_path / "repo", tiny_store)
    source = tmp_path / "in.csv"
    source.write_text('text\na small dog\n"a tall tree\nthe old house\na red car\n', encoding="utf-8")
    out = tmp_path / "out.parquet"
    job = _score(repository, source, out, "--workers", "1")
    stdout, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr
    summary = json.loads(stdout)
    note = f"{source}: 1 row(s) span several lines (quoted fields with line breaks); the first starts on line 3"
    assert summary["notes"] == [note + ": check for a stray quote there"]
    assert note in stderr
    assert [row["row"] for row in pq.read_table(out).to_pylist()] == [1, 2]


def test_leftovers_of_a_killed_job_are_removed_by_the_next_run(tiny_store: Path, tmp_path: Path) -> None:
    repository = tiny_repository(tmp_path / "repo", tiny_store)
    source = _big_input(tmp_path / "big.jsonl")
    out = tmp_path / "scored.parquet"
    job = _score(repository, source, out, "--workers", "1")
    wait_until(lambda: len(list(tmp_path.glob(".scored*.partial-*"))) == 2, "the job writes its partial files")
    job.kill()
    job.wait(60)
    assert len(list(tmp_path.glob(".scored*.partial-*"))) == 2  # SIGKILL cleans nothing up
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps({"text": "a small dog"}) + "\n", encoding="utf-8")
    rerun = _score(repository, small, out, "--workers", "1")
    _, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr
    assert list(tmp_path.glob(".scored*.partial-*")) == []
    assert pq.read_table(out).num_rows == 1


def test_sigterm_stops_a_job_between_batches_without_leftovers_or_tracebacks(tiny_store: Path, tmp_path: Path
                                                                            ) -> None:
    repository = tiny_repository(tmp_path / "repo", tiny_store)
    source = _big_input(tmp_path / "big.jsonl")
    out = tmp_path / "scored.parquet"
    job = subprocess.Popen([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score", "--model",
                            str(repository / "tiny"), "--input", str(source), "--output", str(out), "--workers", "2",
                            "--batch-size", "64"], stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert job.stderr is not None
    seen = ""
    while "scored" not in seen:  # the first batches are written
        chunk = job.stderr.read(64)
        assert chunk, "the job ended before it was stopped"
        seen += chunk
    rest: list[str] = []
    drain = threading.Thread(target=lambda: rest.append(job.stderr.read() if job.stderr else ""), daemon=True)
    drain.start()
    os.kill(job.pid, signal.SIGTERM)
    assert job.wait(60) == 128 + signal.SIGTERM
    drain.join(30)
    output = seen + "".join(rest)
    assert "Traceback" not in output and "BrokenPipe" not in output, output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.jsonl", "repo"]
