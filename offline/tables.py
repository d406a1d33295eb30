"""Reading texts from Parquet, CSV, TSV or JSONL and writing scored rows to Parquet.

Readers yield `Record`s in file order, with the row's number (1-based, data rows only: the first
row under a CSV header is row 1) and, for text files, the line it starts on, so a bad row is
reported where a user can find it. A bad row (no text, empty text, invalid UTF-8, over the byte
limit, a JSONL line that is not an object) is a `Record` with `error` set, never an exception:
one bad row does not stop a job of millions. CSV is read as `tlserve train` reads it
(`tlserve.core.text_files`): rows spanning lines are counted and the first one named in `notes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.core.errors import InputFileError, TlserveError
from tlserve.core.text_files import Format, SpanningRows, delimited_rows, detect_format

FORMATS: tuple[Format, ...] = ("parquet", "csv", "tsv", "jsonl")


@dataclass(slots=True)
class Record:
    """One input row: its number (1-based, data rows only), its id (if an id column was named), its text or what
    was wrong, and the line it starts on (text files)."""

    row: int
    id: str | None
    text: str | None
    error: str | None = None
    line: int | None = None


def input_format(path: Path, given: str | None) -> Format:
    return detect_format(path, given, FORMATS)


def _checked(row: int, identifier: str | None, text: Any, max_text_bytes: int, line: int | None = None) -> Record:
    def bad(error: str) -> Record:
        return Record(row, identifier, None, error, line)

    if text is None:
        return bad("no text (null or missing)")
    if not isinstance(text, str):
        return bad(f"the text is a {type(text).__name__}, not a string")
    if not text.strip():
        return bad("empty text")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: what invalid UTF-8 bytes decode to here
        return bad("invalid UTF-8")
    if size > max_text_bytes:
        return bad(f"{size} UTF-8 bytes; the limit is --max-text-bytes={max_text_bytes}")
    return Record(row, identifier, text, None, line)


def read_records(path: Path, fmt: Format, text_column: str, id_column: str | None, max_text_bytes: int,
                 notes: list[str] | None = None) -> Iterator[Record]:
    """The file's rows as `Record`s, in order; what the reader noticed (rows spanning lines) is appended to
    `notes` once the file is read."""
    if not path.is_file():
        raise TlserveError(f"{path}: no such file" if not path.exists() else f"{path}: is not a file")
    if fmt == "parquet":
        yield from _parquet(path, text_column, id_column, max_text_bytes)
    elif fmt in ("csv", "tsv"):
        spanning = SpanningRows(path)
        yield from _delimited(path, fmt, text_column, id_column, max_text_bytes, spanning)
        if notes is not None and (note := spanning.note()):
            notes.append(note)
    else:
        yield from _jsonl(path, text_column, id_column, max_text_bytes)


def _parquet(path: Path, text_column: str, id_column: str | None, max_text_bytes: int) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise TlserveError(f"{path}: not a readable Parquet file ({exc})") from None
    names = table.schema_arrow.names
    for column in [text_column, *([id_column] if id_column else [])]:
        if column not in names:
            raise TlserveError(f"{path}: no column {column!r}; columns: {names}")
    columns = [text_column, *([id_column] if id_column else [])]
    row = 0
    for batch in table.iter_batches(batch_size=8192, columns=columns):
        texts = batch.column(text_column)
        if pa.types.is_binary(texts.type) or pa.types.is_large_binary(texts.type):
            values = [None if v is None else v.decode("utf-8", "surrogateescape") for v in texts.to_pylist()]
        else:
            values = texts.to_pylist()
        ids = batch.column(id_column).to_pylist() if id_column else [None] * len(values)
        for text, identifier in zip(values, ids, strict=True):
            row += 1
            yield _checked(row, None if identifier is None else str(identifier), text, max_text_bytes)


def _delimited(path: Path, fmt: Format, text_column: str, id_column: str | None, max_text_bytes: int,
               spanning: SpanningRows) -> Iterator[Record]:
    # surrogateescape: invalid UTF-8 bytes become lone surrogates, so one bad row is reported, not fatal.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        header, rows = delimited_rows(handle, path, fmt, spanning)
        for column, flag in ((text_column, "--text-column"), *([(id_column, "--id-column")] if id_column else [])):
            if column not in header:
                raise InputFileError(path, f"no column {column!r}; columns: {header} (name the column with {flag})", 1)
        text_at = header.index(text_column)
        id_at = header.index(id_column) if id_column else None
        for row, (line, fields) in enumerate(rows, start=1):
            identifier = fields[id_at] if id_at is not None and id_at < len(fields) else None
            text = fields[text_at] if text_at < len(fields) else None
            yield _checked(row, identifier, text, max_text_bytes, line)


def _jsonl(path: Path, text_column: str, id_column: str | None, max_text_bytes: int) -> Iterator[Record]:
    row = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row += 1
            try:
                value = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                yield Record(row, None, None, "invalid UTF-8", number)
                continue
            except json.JSONDecodeError as exc:
                yield Record(row, None, None, f"not JSON ({exc.msg} at column {exc.colno})", number)
                continue
            if not isinstance(value, dict):
                yield Record(row, None, None, f"a JSON {type(value).__name__}, not an object", number)
                continue
            identifier = value.get(id_column) if id_column else None
            yield _checked(row, None if identifier is None else str(identifier), value.get(text_column),
                           max_text_bytes, number)


def scored_columns(labels: list[str], indices: np.ndarray, probabilities: np.ndarray, token_counts: np.ndarray,
                   oov_fractions: np.ndarray) -> dict[str, Any]:
    """The scored columns of a batch (top label, top-k labels and probabilities, token statistics) as Arrow
    arrays, built from the arrays in Arrow's own code: Python lists of n x k names and floats cost the
    process that writes the file as much as a worker spends on the texts' features."""
    import pyarrow as pa

    n, k = indices.shape  # k >= 1: ranking keeps at least the top label
    names = pa.array(labels, pa.string())
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return {"label": names.take(pa.array(indices[:, 0])),
            "labels": pa.ListArray.from_arrays(offsets, names.take(pa.array(indices.ravel()))),
            "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probabilities.astype(np.float32).ravel())),
            "token_count": pa.array(token_counts.astype(np.int32)),
            "oov_fraction": pa.array(oov_fractions.astype(np.float32))}


def partial_path(path: Path) -> Path:
    """Where `path` is written until the job is done (hidden, named after this process)."""
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


class ScoredWriter:
    """Parquet rows (row, id, label, labels, probabilities, token_count, oov_fraction) written to a temporary
    file beside `path` and moved into place by `commit`: an interrupted job leaves no file that looks complete."""

    def __init__(self, path: Path, with_id: bool) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self.partial = partial_path(path)
        fields = [pa.field("row", pa.int64())]
        if with_id:
            fields.append(pa.field("id", pa.string()))
        fields += [pa.field("label", pa.string()), pa.field("labels", pa.list_(pa.string())),
                   pa.field("probabilities", pa.list_(pa.float32())), pa.field("token_count", pa.int32()),
                   pa.field("oov_fraction", pa.float32())]
        self.schema = pa.schema(fields)
        self.with_id = with_id
        self._writer = pq.ParquetWriter(self.partial, self.schema)

    def write(self, columns: dict[str, list[Any]]) -> None:
        import pyarrow as pa

        if not self.with_id:
            columns = {name: values for name, values in columns.items() if name != "id"}
        self._writer.write_table(pa.table(columns, schema=self.schema))

    def write_table(self, table: Any) -> None:
        """Rows already in the output's columns (a pyarrow table, with or without `id`)."""
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        try:
            self._writer.close()
        finally:
            self.partial.unlink(missing_ok=True)
