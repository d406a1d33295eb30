"""Labelled texts from CSV, TSV, JSONL or fastText files: what `tlserve train` learns from and `tlserve test`
scores a model on.

Every error names the file and the line: a missing column, an empty file, bytes that are
not UTF-8, a label that is not text, a single class.

One rule for labels in every format: a label is text (a CSV/TSV field, a JSON *string*, the
word after ``__label__``), surrounding whitespace trimmed, never empty. A JSON number, null,
boolean, list or object is refused with its line, so ``1`` and ``"1"`` never merge and null
never becomes a class named "None".

CSV and TSV are read as `tlserve.core.text_files` reads them for `tlserve score` (quoted fields that
span lines are counted and the first one named: a stray quote is legal CSV and rarely meant).
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tlserve.core.errors import InputFileError
from tlserve.core.preprocessing import HAN
from tlserve.core.text_files import Format, SpanningRows, delimited_rows
from tlserve.core.text_files import detect_format as detect

_LOGGER = logging.getLogger(__name__)

DataFormat = Literal["csv", "tsv", "jsonl", "fasttext"]
LABELLED_FORMATS: tuple[Format, ...] = ("csv", "tsv", "jsonl", "fasttext")
_FASTTEXT_LABEL = "__label__"
_HAN = re.compile(f"[{HAN}]")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class LabelledData:
    """Texts with their labels, and where each came from."""

    texts: list[str]
    labels: list[str]
    lines: list[int]
    """Line number of each example in its file (1-based)."""
    path: Path
    skipped_empty: int = 0
    """Examples skipped because their text was empty (with the "skip" policy)."""
    notes: list[str] = field(default_factory=list)
    """What the reader noticed and the user should know (texts spanning several lines)."""

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: np.ndarray) -> LabelledData:
        return LabelledData(
            [self.texts[i] for i in indices], [self.labels[i] for i in indices],
            [self.lines[i] for i in indices], self.path, notes=self.notes,
        )


def is_chinese(texts: list[str], sample: int = 2000) -> bool:
    """Whether most letters of (a sample of) the texts are Chinese characters."""
    joined = "".join(texts[:sample])
    letters = len(_LETTER.findall(joined))
    return letters > 0 and len(_HAN.findall(joined)) / letters > 0.3


def detect_format(path: Path, fmt: str | None) -> DataFormat:
    return detect(path, fmt, LABELLED_FORMATS)  # type: ignore[return-value]


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except OSError as exc:
        raise InputFileError(path, f"unreadable: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFileError(path, f"bytes that are not UTF-8 at byte {exc.start} ({exc.reason})", line) from None
    if not text.strip():
        raise InputFileError(path, "the file is empty")
    return text


def load_labelled(
    path: Path,
    fmt: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    empty: str = "skip",
    unlabelled: str = "error",
) -> LabelledData:
    """Reads one labelled file. Empty texts are skipped and counted, or an error; so are rows without a label
    (a JSON null or an empty cell) with `unlabelled` "skip", e.g. the lines of a payload log nobody labelled."""
    path = Path(path)
    if empty not in ("skip", "error"):
        raise ValueError(f"empty-text policy must be 'skip' or 'error', not {empty!r}")
    if unlabelled not in ("skip", "error"):
        raise ValueError(f"unlabelled-row policy must be 'skip' or 'error', not {unlabelled!r}")
    skipped_unlabelled = 0
    kind = detect_format(path, fmt)
    text = _decode(path)
    rows: list[tuple[int, str, str]] = []
    notes: list[str] = []
    if kind in ("csv", "tsv"):
        spanning = SpanningRows(path)
        header, records = delimited_rows(io.StringIO(text, newline=""), path, kind, spanning)
        for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
            if column not in header:
                raise InputFileError(path, f"missing column {column!r}; the header has {header} (name the column "
                                           f"with {flag})", 1)
        text_at, label_at = header.index(text_column), header.index(label_column)
        for first, record in records:
            if len(record) < len(header):
                raise InputFileError(path, f"row has {len(record)} fields, fewer than the header's {len(header)}",
                                     first)
            rows.append((first, record[text_at], record[label_at]))
        if note := spanning.note():
            notes.append(note)
    elif kind == "jsonl":
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise InputFileError(path, f"not valid JSON: {exc}", line) from None
            if not isinstance(record, dict):
                raise InputFileError(path, "each line must be a JSON object", line)
            for column in (text_column, label_column):
                if column not in record:
                    raise InputFileError(path, f"missing field {column!r}", line)
            if not isinstance(record[text_column], str):
                raise InputFileError(path, f"field {text_column!r} must be a string", line)
            label = record[label_column]
            if label is None and unlabelled == "skip":
                skipped_unlabelled += 1
                continue
            if not isinstance(label, str):
                shown = json.dumps(label)[:40]
                raise InputFileError(path, f"field {label_column!r} is {_json_kind(label)} {shown}; labels are "
                                           f"strings (write \"{shown}\" if that is the class name)", line)
            rows.append((line, record[text_column], label))
    else:
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            parts = raw.split()
            labels = [p[len(_FASTTEXT_LABEL):] for p in parts if p.startswith(_FASTTEXT_LABEL)]
            if not labels or not labels[0]:
                raise InputFileError(path, f"no {_FASTTEXT_LABEL}<label> on the line", line)
            words = [p for p in parts if not p.startswith(_FASTTEXT_LABEL)]
            rows.append((line, " ".join(words), labels[0]))
    if not rows:
        raise InputFileError(path, "the file holds a header but no examples")
    data = LabelledData([], [], [], path, notes=notes)
    for note in notes:
        _LOGGER.warning("%s", note)
    for line, text_value, label_value in rows:
        label_value = label_value.strip()
        if not label_value:
            if unlabelled == "skip":
                skipped_unlabelled += 1
                continue
            raise InputFileError(path, "empty label (use --unlabelled skip to skip rows without a label)", line)
        if not text_value.strip():
            if empty == "error":
                raise InputFileError(path, "empty text (use --empty skip to skip such rows)", line)
            data.skipped_empty += 1
            continue
        data.texts.append(text_value)
        data.labels.append(label_value)
        data.lines.append(line)
    if skipped_unlabelled:
        _LOGGER.info("%s: %d row(s) without a label skipped", path, skipped_unlabelled)
    if not data.texts:
        raise InputFileError(path, "every text is empty")
    if len(set(data.labels)) < 2:
        raise InputFileError(path, f"only one class ({data.labels[0]!r}); a classifier needs at least two")
    return data


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


