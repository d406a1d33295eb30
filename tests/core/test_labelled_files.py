"""Labelled files are never misread silently: quotes, lines, label types."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlserve.core.errors import InputFileError

# --- input files: misread silently no more ------------------------------------------------------------------------


def test_csv_row_spanning_lines_is_reported_with_its_first_line(tmp_path: Path) -> None:
    from tlserve.core.labelled import load_labelled

    lines = ["text,label"] + [f"text number {i},{'a' if i % 2 else 'b'}" for i in range(1, 300)]
    lines[150] = '"a stray quote opens here,a'  # line 151 of the file
    lines[151] = 'and closes at the end of this line",b'
    path = tmp_path / "stray.csv"
    path.write_text("\n".join(lines) + "\n")
    data = load_labelled(path)
    assert len(data) == 298  # the quoted field swallowed one row: legal CSV, and now said
    assert any("1 row(s) span several lines" in note and "line 151" in note for note in data.notes)


def test_tsv_quotes_are_plain_characters(tmp_path: Path) -> None:
    from tlserve.core.labelled import load_labelled

    lines = ["text\tlabel"] + [f"text {i}\t{'a' if i % 2 else 'b'}" for i in range(1, 300)]
    lines[21] = '"a stray quote\ta'  # line 22 of the file
    path = tmp_path / "stray.tsv"
    path.write_text("\n".join(lines) + "\n")
    data = load_labelled(path)
    assert len(data) == 299 and data.texts[20] == '"a stray quote' and data.lines[20] == 22


@pytest.mark.parametrize("label", ["1", "1.0", "null", "true", "[1, 2]", '{"a": 1}'])
def test_jsonl_labels_must_be_strings(label: str, tmp_path: Path) -> None:
    from tlserve.core.labelled import load_labelled

    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ' + label + "}\n")
    with pytest.raises(InputFileError) as caught:
        load_labelled(path)
    assert caught.value.line == 2 and "labels are strings" in str(caught.value)
