"""Files of texts: their format, and CSV/TSV rows with the lines they came from. Shared by `tlserve train`
(labelled texts) and `tlserve score` (texts to label), so both read a file alike and say the same of it.

CSV fields may be quoted and then span lines (RFC 4180); a stray quote makes one field swallow
the rows after it, which is legal CSV and rarely meant, so the reader counts the rows that span
several lines and says where the first one starts. TSV has no quoting (as in the IANA
definition): a quote is an ordinary character there.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tlserve.core.errors import InputFileError

Format = Literal["csv", "tsv", "jsonl", "fasttext", "parquet"]
FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "fasttext", "parquet")
_BY_SUFFIX: dict[str, Format] = {
    ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "fasttext", ".ft": "fasttext",
    ".parquet": "parquet", ".pq": "parquet",
}
# Whole e-mails fit in one CSV field; the csv module's default cap is 128 KiB.
csv.field_size_limit(1 << 26)


def detect_format(path: Path, given: str | None, accepted: tuple[Format, ...]) -> Format:
    """The format named by `given` (a --format flag) or by the file's suffix, if it is one of `accepted`."""
    found: str | None = given or _BY_SUFFIX.get(path.suffix.lower())
    if found is None:
        raise InputFileError(path, f"cannot tell the format from the suffix {path.suffix!r}; pass --format "
                                   f"({', '.join(accepted)})")
    if found not in accepted:
        how = f"--format {given}" if given else f"the suffix {path.suffix!r} ({found})"
        raise InputFileError(path, f"{how} is not a format read here; formats: {', '.join(accepted)}")
    return found


@dataclass
class SpanningRows:
    """Rows that span several lines (quoted fields with line breaks), for the note every reader gives."""

    path: Path
    first_lines: list[int] = field(default_factory=list)

    def note(self) -> str | None:
        if not self.first_lines:
            return None
        return (f"{self.path}: {len(self.first_lines)} row(s) span several lines (quoted fields with line breaks); "
                f"the first starts on line {self.first_lines[0]}: check for a stray quote there")


def delimited_rows(lines: Iterable[str], path: Path, kind: Format, spanning: SpanningRows
                   ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and the (first line, fields) of each non-blank row of a CSV or TSV file read as `lines`
    (opened with ``newline=""``). A malformed row is an InputFileError naming its line."""
    if kind == "csv":
        reader = csv.reader(lines)
    else:
        reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        header = next(reader, [])
    except csv.Error as exc:
        raise InputFileError(path, f"malformed {kind.upper()} header: {exc}", 1) from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        end = reader.line_num  # the line the previous row ended on
        while True:
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise InputFileError(path, f"malformed {kind.upper()} row: {exc}", end + 1) from None
            first, end = end + 1, reader.line_num
            if not record:
                continue  # a blank line
            if end > first:
                spanning.first_lines.append(first)
            yield first, record

    return header, rows()
