"""`tlserve score`: a file of texts in, a Parquet file of labels out, bad rows in a side file.

Rows are read in order and scored in batches; the output and the side file are written to
temporary files beside their targets and moved into place only when every row is done, so a
failed or interrupted job never leaves a file that looks complete. A summary (rows, scored,
bad, seconds, rows per second) is printed at the end and returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlserve.core.bundle import check_model_name, versions_of
from tlserve.core.errors import TlserveError
from tlserve.core.native_logs import filtered_stderr
from tlserve.core.processes import writer_is_gone
from tlserve.offline.tables import Record, ScoredWriter, input_format, partial_path, read_records

_LOGGER = logging.getLogger(__name__)


@dataclass
class ScoreJob:
    """What `tlserve score` runs."""

    model: str
    """REPOSITORY/MODEL[:VERSION]: a model of a model repository (newest version without :VERSION)."""
    input: Path
    """Parquet, CSV or JSONL file with a text column."""
    output: Path
    """Parquet file to write (replaced only when the job succeeds)."""
    input_format: str | None = None
    """parquet, csv or jsonl; None: from the suffix."""
    text_column: str = "text"
    """Column (or JSONL field) of the texts."""
    id_column: str | None = None
    """Column kept as `id` in the output."""
    top_k: int = 3
    """Labels per text in the output (0: all)."""
    engine: str = "local"
    """local: worker processes on this machine; ray: Ray Data actors on a Ray instance or cluster."""
    address: str | None = None
    """ray: the cluster to join (HOST:PORT or "auto"); None: a Ray instance of the job's own."""
    workers: int = 1
    """Scoring processes on this machine (local), or Ray actors (ray)."""
    batch_size: int = 512
    """Texts per batch."""
    max_text_bytes: int = 16_384
    """Longer texts are reported as bad rows, as the server refuses them."""
    errors: Path | None = None
    """JSON lines of the bad rows (row, id, error); default: OUTPUT with .errors.jsonl."""
    progress: bool = True
    """A progress line on stderr."""


def resolve_model(spec: str) -> tuple[Path, Path]:
    """REPOSITORY/MODEL[:VERSION] -> (repository, version folder)."""
    name, _, version_text = spec.rpartition(":") if ":" in Path(spec).name else (spec, "", "")
    path = Path(name)
    repository, model = path.parent, path.name
    check_model_name(model)
    versions = versions_of(path)
    if not versions:
        raise TlserveError(f"{path}: no complete version of model {model!r} (give REPOSITORY/MODEL[:VERSION])")
    if version_text:
        if not version_text.isdigit() or int(version_text) not in versions:
            raise TlserveError(f"{path}: no version {version_text!r}; versions: {versions}")
        return repository, path / version_text
    return repository, path / str(versions[-1])


def errors_path(job: ScoreJob) -> Path:
    return job.errors or job.output.with_name(job.output.stem + ".errors.jsonl")


def remove_stale_partials(*paths: Path) -> None:
    """Removes the partial files of earlier jobs on these outputs whose process is gone (a job killed
    with SIGKILL, or a machine that went down, cleans up nothing)."""
    for path in paths:
        for partial in path.parent.glob(f".{path.name}.partial-*"):
            pid = partial.name.rsplit("-", 1)[1]
            if pid.isdecimal() and writer_is_gone(int(pid), partial):
                partial.unlink(missing_ok=True)
                _LOGGER.info("removed %s, left by a job that was killed", partial)


def run(job: ScoreJob) -> dict[str, Any]:
    from tlserve.core.bundle import Bundle

    if job.engine not in ("local", "ray"):
        raise TlserveError(f"unknown engine {job.engine!r}; engines: local, ray")
    repository, folder = resolve_model(job.model)
    labels = Bundle.open(folder, verify=True).labels
    fmt = input_format(job.input, job.input_format)
    if job.output.is_dir():
        raise TlserveError(f"{job.output}: is a folder; --output is the Parquet file to write")
    if not job.output.parent.is_dir():
        raise TlserveError(f"{job.output.parent}: no such folder for --output")
    bad_path = errors_path(job)
    bad_partial = partial_path(bad_path)
    remove_stale_partials(job.output, bad_path)
    notes: list[str] = []
    records = read_records(job.input, fmt, job.text_column, job.id_column, job.max_text_bytes, notes)
    writer = ScoredWriter(job.output, job.id_column is not None)
    started = time.perf_counter()
    counts = {"rows": 0, "scored": 0, "bad": 0}

    def good_records() -> Iterator[Record]:
        """The rows to score; the others go to the side file with their row numbers."""
        with bad_partial.open("w", encoding="utf-8") as bad:
            for record in records:
                counts["rows"] += 1
                if record.error is not None:
                    counts["bad"] += 1
                    where = {"row": record.row, **({"line": record.line} if record.line is not None else {})}
                    bad.write(json.dumps({**where, "id": record.id, "error": record.error}) + "\n")
                    continue
                yield record

    def progress(scored: int) -> None:
        counts["scored"] += scored
        if job.progress:
            seconds = time.perf_counter() - started
            print(f"\rscored {counts['scored']:,} rows, {counts['bad']:,} bad, {counts['scored'] / seconds:,.0f} "
                  "rows/s", end="", file=sys.stderr, flush=True)

    try:
        if job.engine == "ray":
            _run_ray(job, folder, repository, good_records(), writer, progress)
        else:
            _run_local(job, folder, repository, labels, good_records(), writer, progress)
        writer.commit()
        os.replace(bad_partial, bad_path)
    except BaseException:
        writer.discard()
        bad_partial.unlink(missing_ok=True)
        raise
    if job.progress:
        print(file=sys.stderr)
    for note in notes:
        _LOGGER.warning("%s", note)
    seconds = time.perf_counter() - started
    summary = {"model": str(folder), "input": str(job.input), "output": str(job.output), "errors": str(bad_path),
               "engine": job.engine, "workers": job.workers, **counts, "seconds": round(seconds, 2),
               "rows_per_second": round(counts["scored"] / max(seconds, 1e-9)), "notes": notes}
    _LOGGER.info("scored %d of %d rows (%d bad, listed in %s) in %.1f s", counts["scored"], counts["rows"],
                 counts["bad"], bad_path, seconds)
    return summary


class Stopped(KeyboardInterrupt):
    """The job was asked to stop (Ctrl-C or SIGTERM); `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_between_batches() -> Iterator[Callable[[], None]]:
    """Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next batch: yields a check that raises
    `Stopped` once one came. An interrupt raised wherever the main thread happens to be can land
    inside pyarrow's writer or onnxruntime's call, whose clean-up then cannot be relied on; between
    batches nothing is half done, and the partial files are removed on the way out. A second signal
    stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None  # signal handlers belong to the main thread
        return
    requested: list[int] = []

    def request(signum: int, frame: Any) -> None:
        if requested:
            raise Stopped(signum)
        requested.append(signum)

    def check() -> None:
        if requested:
            raise Stopped(requested[0])

    previous = {signum: signal.signal(signum, request) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_local(job: ScoreJob, folder: Path, repository: Path, labels: list[str], records: Iterator[Record],
               writer: ScoredWriter, progress: Callable[[int], None]) -> None:
    with stop_between_batches() as check:
        _score_local(job, folder, repository, labels, records, writer, progress, check)


def _score_local(job: ScoreJob, folder: Path, repository: Path, labels: list[str], records: Iterator[Record],
                 writer: ScoredWriter, progress: Callable[[int], None], check: Callable[[], None]) -> None:
    from tlserve.offline.engine import score_batches
    from tlserve.offline.tables import scored_columns

    good: list[list[Record]] = []

    def batches() -> Iterator[list[str]]:
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) >= job.batch_size:
                good.append(batch)
                yield [r.text or "" for r in batch]
                batch = []
        if batch:
            good.append(batch)
            yield [r.text or "" for r in batch]

    # Closed on the way out, stop or error: the worker pool ends here and now, not when the generator is
    # collected (at interpreter exit a pool's threads are gone and ending it can hang).
    with contextlib.closing(score_batches(folder, repository, batches(), job.top_k, job.workers)) as scored_batches:
        for scored in scored_batches:
            check()
            batch = good.pop(0)
            writer.write({"row": [r.row for r in batch], "id": [r.id for r in batch],
                          **scored_columns(labels, scored.indices, scored.probabilities, scored.token_counts,
                                           scored.oov_fractions)})
            progress(len(batch))


def _run_ray(job: ScoreJob, folder: Path, repository: Path, records: Iterator[Record], writer: ScoredWriter,
             progress: Callable[[int], None]) -> None:
    from tlserve.offline import ray_engine

    # Ray prints its cluster's messages (a lost worker, say) from a thread of its own: to stderr, so
    # stdout holds only the summary; its C++ log lines (auth retries, core worker notices) are dropped.
    with filtered_stderr(), contextlib.redirect_stdout(sys.stderr):
        for table in ray_engine.score_records(folder, repository, records, job.top_k, job.workers, job.batch_size,
                                              job.address):
            writer.write_table(table)
            progress(table.num_rows)
