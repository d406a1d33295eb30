"""Faults in training and vector import: data loss on import, many classes, killed runs, vector files misread,
long texts, help that disagreed with behaviour. Each kept as a regression test."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tlserve.core.errors import InputFileError

from conftest import (
    ROOT,
    WORDNET_SAMPLE,
    wait_until,
)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlserve.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})



# --- vectors import never deletes what it did not write ----------------------------------------------------------


def _tiny_vec(path: Path) -> Path:
    path.write_text("3 2\ncat 1 0\ndog 0 1\ntree 1 1\n")
    return path


def test_vector_import_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    source = _tiny_vec(tmp_path / "good.vec")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    result = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(victim), "--no-progress")
    assert result.returncode == 2 and "not a vector store" in result.stderr and str(victim) in result.stderr
    assert (victim / "thesis.tex").read_text() == "years of work"

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    result = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(a_file), "--no-progress")
    assert result.returncode == 2 and "not a folder" in result.stderr and a_file.read_text() == "keep me"

    store = tmp_path / "store"
    assert cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store),
               "--no-progress").returncode == 0
    again = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store), "--no-progress")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "good.vec").write_text("2 2\ncat 1 0\nbird 0 1\n")
    replaced = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store), "--no-progress",
                   "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (store / "vocab.txt").read_text().split() == ["cat", "bird"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging debris left behind"


# --- many classes: bounded figures and report ---------------------------------------------------------------------


def test_many_classes_train_with_bounded_figures_and_report(glove_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "many.csv"
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as source:
        rows = [row["text"] for row in csv.DictReader(source)]
    with open(data, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(300 * 3):
            writer.writerow([rows[i % len(rows)], f"class {i // 3}"])
    result = cli("--log-level", "WARNING", "train", "--data", str(data), "--vectors", str(glove_store),
                 "--repository", str(tmp_path / "repo"), "--model", "many", "--mode", "frozen", "--epochs", "2",
                 "--hidden", "16", "--calibration-folds", "1", "--no-progress", "--test-fraction", "0.34",
                 "--validation-fraction", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr  # scikit-learn's "could represent a regression problem", once per fit
    version = tmp_path / "repo" / "many" / "1"
    with Image.open(version / "confusion.png") as figure:
        assert max(figure.size) <= 1200, figure.size  # a full matrix would be over 12,000 pixels wide
    report = json.loads((version / "report.json").read_text())
    assert "cells" in report["test"]["confusion"] and "matrix" not in report["test"]["confusion"]
    assert (version / "report.json").stat().st_size < 1_000_000


# --- no debris from killed runs; a blocking folder is skipped and named ------------------------------------------


def _train_args(store: Path, repository: Path, *extra: str) -> list[str]:
    return ["--log-level", "WARNING", "train", "--data", str(WORDNET_SAMPLE), "--vectors", str(store),
            "--repository", str(repository), "--model", "wn", "--mode", "frozen", "--epochs", "1",
            "--patience", "1", "--hidden", "32", "--train-fraction", "0.2", "--calibration-folds", "1",
            "--no-progress", *extra]


def _staging(repository: Path) -> list[Path]:
    return sorted((repository / "wn").glob(".staging-*")) if (repository / "wn").is_dir() else []


def test_killed_training_leaves_no_debris_and_a_blocking_folder_is_skipped(glove_store: Path, tmp_path: Path
                                                                           ) -> None:
    repository = tmp_path / "repo"
    # SIGTERM while a version is being written: the run removes its own staging folder.
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", *_train_args(glove_store, repository)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: bool(_staging(repository)) or process.poll() is not None, "a staging folder appears")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    left_by_term = [sorted(p.name for p in f.rglob("*")) for f in _staging(repository)]
    assert left_by_term == [], f"SIGTERM left a staging folder (exit {process.returncode}): {stderr[-2000:]}"

    # SIGKILL cannot be caught: the next run removes what the killed one left, and says so.
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", *_train_args(glove_store, repository)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: bool(_staging(repository)) or process.poll() is not None, "a staging folder appears")
    left = _staging(repository)
    process.kill()
    process.wait(60)
    assert left and all(folder.exists() for folder in left)

    # A numbered folder without a manifest (here 5/) must not block publishing.
    (repository / "wn" / "5").mkdir(parents=True)
    (repository / "wn" / "5" / "model.onnx").write_bytes(b"half a copy")
    result = cli(*_train_args(glove_store, repository))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (repository / "wn" / "6" / "manifest.json").is_file()
    assert "removed" in result.stderr and str(left[0]) in result.stderr
    assert str(repository / "wn" / "5") in result.stderr
    assert _staging(repository) == []


@pytest.mark.parametrize(
    ("content", "fmt", "line", "needle"),
    [
        ("2 2\ncat 1 0\ndog 0 1\ntree 1 1\nbird 0 0\n", "fasttext", 4, "the header says 2 words but more rows follow"),
        ("", "glove", None, "the file is empty"),
        ("", "fasttext", None, "the file is empty"),
        ("a 1 2 3\nb 1 2\nc 3 4\nd 5 6\n", "glove", 1, "has 3 values; the dimension is 2"),
    ],
)
def test_vector_files_misread_or_tracebacks_name_file_and_line(content: str, fmt: str, line: int | None,
                                                               needle: str, tmp_path: Path) -> None:
    from tlserve.trainer.vectors import import_vectors

    source = tmp_path / "bad.vec"
    source.write_text(content)
    with pytest.raises(InputFileError) as caught:
        import_vectors(source, tmp_path / "store", fmt, progress=False)
    assert str(source) in str(caught.value) and needle in str(caught.value)
    assert caught.value.line == line


def test_a_folder_as_the_vector_file_is_named(tmp_path: Path) -> None:
    result = cli("vectors", "import", str(tmp_path), "--format", "glove", "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and "is a folder" in result.stderr and "Traceback" not in result.stderr


def test_truncated_long_texts_are_counted_and_reported(glove_store: Path, tmp_path: Path) -> None:
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    for row in rows[::40]:  # 30 long texts over every class: some land in the training split
        row["text"] = " ".join(["cat"] * 5000)
    data = tmp_path / "long.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    result = cli("--log-level", "WARNING", "train", "--data", str(data), "--vectors", str(glove_store),
                 "--repository", str(tmp_path / "repo"), "--model", "long", "--mode", "frozen", "--epochs", "2",
                 "--hidden", "16", "--calibration-folds", "1", "--no-progress", "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "repo" / "long" / "1" / "manifest.json").read_text())
    report = (tmp_path / "repo" / "long" / "1" / "report.md").read_text()
    truncated = manifest["training_data"]["truncated_texts"]
    assert 0 < truncated < 30
    assert f"{truncated} of " in result.stderr and "more than 4096 tokens" in result.stderr
    assert f"Long texts: {truncated} training texts" in report


# --- help agrees with behaviour ---------------------------------------------------------------------------------


def test_train_help_describes_auto_pooling_as_the_readme_does() -> None:
    out = cli("train", "--help").stdout
    assert "mean for finetune" not in out and "mixed with" in " ".join(out.split())
    assert "mixes their probabilities" in (ROOT / "docs" / "training.md").read_text()
