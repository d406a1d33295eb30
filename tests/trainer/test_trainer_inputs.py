"""Vector import and labelled data: every format, every bad input, errors that name file and line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tlserve.core.errors import InputFileError
from tlserve.core.labelled import load_labelled
from tlserve.core.vector_store import VectorStore
from tlserve.trainer.datasets import make_splits
from tlserve.trainer.vectors import import_vectors

from conftest import WORDNET_SAMPLE


def gensim_data(name: str) -> Path:
    import gensim

    return Path(os.path.dirname(gensim.__file__)) / "test" / "test_data" / name


@pytest.mark.parametrize(
    ("name", "fmt", "size", "dim"),
    [
        ("test_glove.txt", "glove", 76, 50),
        ("euclidean_vectors.bin", "word2vec-bin", 2747, 10),
        ("lee_fasttext.vec", "fasttext", 1762, 10),
        ("EN.1-10.cbow1_wind5_hs0_neg10_size300_smpl1e-05.txt", "word2vec", 20, 300),
    ],
)
def test_import_every_vector_format(name: str, fmt: str, size: int, dim: int, tmp_path: Path) -> None:
    from gensim.models import KeyedVectors

    source = gensim_data(name)
    manifest = import_vectors(source, tmp_path / "store", fmt, case="keep", progress=False)
    store = VectorStore(tmp_path / "store")
    assert (manifest.size, manifest.dimension) == (size, dim) == (len(store), store.dimension)
    reference = KeyedVectors.load_word2vec_format(str(source), binary=fmt == "word2vec-bin",
                                                  no_header=fmt == "glove")
    word = reference.index_to_key[3]
    row = int(store.index.lookup([word])[0])
    assert store.vocabulary[row] == word
    assert np.array_equal(store.matrix[row], reference[word].astype(np.float32))
    assert manifest.source_name == name and len(manifest.fingerprint) == 64
    store.verify()
    loaded = np.load(tmp_path / "store" / "vectors.npy", mmap_mode="r", allow_pickle=False)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float32


def test_import_limit_and_lower_case_keep_first_of_collisions(tmp_path: Path) -> None:
    source = tmp_path / "vectors.txt"
    source.write_text("4 2\nApple 1 1\napple 2 2\nBanana 3 3\ncherry 4 4\n")
    manifest = import_vectors(source, tmp_path / "store", "word2vec", limit=3, case="lower", progress=False)
    store = VectorStore(tmp_path / "store")
    assert store.vocabulary == ["apple", "banana"] and manifest.size == 2
    assert store.matrix[0].tolist() == [1.0, 1.0]  # the first of "Apple"/"apple"
    assert store.index.lookup(["banana", "cherry", "Apple"]).tolist() == [1, -1, -1]


def test_import_kumo_package_layout(glove_source: Path, tmp_path: Path) -> None:
    import_vectors(glove_source, tmp_path / "store", "kumo-npy", limit=1000, progress=False)
    store = VectorStore(tmp_path / "store")
    assert len(store) == 1000 and store.dimension == 50
    assert store.vocabulary[:3] == ["the", ",", "."]


@pytest.mark.parametrize(
    ("content", "fmt", "line", "needle"),
    [
        ("3 2\na 1 2\nb 1 2 3\nc 1 2\n", "word2vec", 3, "the row of 'b' has 3 values; the dimension is 2"),
        ("5 2\na 1 2\nb 1 2\n", "word2vec", None, "header says 5 words but the file has 2"),
        ("a 1 2\nb 1 x\n", "glove", 2, "value 'x' of 'b' is not a number"),
        ("a 1 2\nb 1 2 3\n", "glove", 2, "has 3 values; the dimension is 2"),
        ("words fifty\na 1 2\n", "fasttext", 1, "the header must be"),
    ],
)
def test_bad_vector_files_name_file_and_line(content: str, fmt: str, line: int | None, needle: str,
                                             tmp_path: Path) -> None:
    source = tmp_path / "bad.txt"
    source.write_text(content)
    with pytest.raises(InputFileError) as caught:
        import_vectors(source, tmp_path / "store", fmt, progress=False)
    assert str(source) in str(caught.value) and needle in str(caught.value)
    if line is not None:
        assert caught.value.line == line
    assert not (tmp_path / "store").exists(), "a failed import must not leave a store behind"


def test_binary_file_read_as_text_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputFileError) as caught:
        import_vectors(gensim_data("euclidean_vectors.bin"), tmp_path / "store", "word2vec", progress=False)
    assert "euclidean_vectors.bin" in str(caught.value)
    assert "not UTF-8" in str(caught.value) and caught.value.line is not None


def test_unreadable_vector_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="file not found"):
        import_vectors(tmp_path / "missing.txt", tmp_path / "store", "glove", progress=False)


def test_store_refuses_tampering(tmp_path: Path) -> None:
    import_vectors(gensim_data("test_glove.txt"), tmp_path / "store", "glove", progress=False)
    with open(tmp_path / "store" / "vocab.txt", "a") as handle:
        handle.write("extra\n")
    with pytest.raises(Exception, match=r"vocab\.txt: sha256 does not match the store manifest"):
        VectorStore(tmp_path / "store").verify()


# --- labelled data -------------------------------------------------------------------

ROWS = [("a cat sat", "animal"), ("a dog ran", "animal"), ("an oak grew", "plant"), ("a rose", "plant")]


def write_format(folder: Path, fmt: str, rows: list[tuple[str, str]] = ROWS) -> Path:
    if fmt == "csv":
        path = folder / "data.csv"
        path.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    elif fmt == "tsv":
        path = folder / "data.tsv"
        path.write_text("label\ttext\n" + "".join(f"{label}\t{t}\n" for t, label in rows))
    elif fmt == "jsonl":
        path = folder / "data.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    else:
        path = folder / "data.txt"
        path.write_text("".join(f"__label__{label} {t}\n" for t, label in rows))
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "fasttext"])
def test_every_data_format(fmt: str, tmp_path: Path) -> None:
    data = load_labelled(write_format(tmp_path, fmt))
    assert list(zip(data.texts, data.labels, strict=True)) == ROWS
    assert data.lines[0] == (2 if fmt in ("csv", "tsv") else 1)


def test_configurable_columns(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    records = ({"body": t, "stars": "5" if label == "animal" else "1"} for t, label in ROWS)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    data = load_labelled(path, text_column="body", label_column="stars")
    assert data.labels == ["5", "5", "1", "1"]


@pytest.mark.parametrize(
    ("name", "content", "line", "needle"),
    [
        ("d.csv", "body,label\nx,a\n", 1, "missing column 'text'"),
        ("d.csv", "", None, "the file is empty"),
        ("d.csv", "text,label\nok,a\n\xff\xfe,b\n", 3, "not UTF-8"),
        ("d.csv", "text,label\nx,a\ny,a\n", None, "only one class"),
        ("d.jsonl", '{"text": "x", "label": "a"}\n{"text": "y"}\n', 2, "missing field 'label'"),
        ("d.jsonl", '{"text": "x", "label": "a"}\nnot json\n', 2, "not valid JSON"),
        ("d.txt", "__label__a x\njust text\n", 2, "no __label__"),
    ],
)
def test_bad_data_names_file_and_line(name: str, content: str, line: int | None, needle: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode("latin-1") if "\xff" in content else content.encode())
    with pytest.raises(InputFileError) as caught:
        load_labelled(path)
    assert needle in str(caught.value) and str(path) in str(caught.value)
    assert caught.value.line == line


def test_empty_texts_skipped_and_counted_or_an_error(tmp_path: Path) -> None:
    path = write_format(tmp_path, "csv", [*ROWS, ("  ", "plant")])
    assert load_labelled(path).skipped_empty == 1
    with pytest.raises(InputFileError) as caught:
        load_labelled(path, empty="error")
    assert caught.value.line == 6 and "empty text" in str(caught.value)


def test_class_too_small_to_split_names_the_class(tmp_path: Path) -> None:
    rows = [(f"cat {i}", "animal") for i in range(10)] + [("oak", "plant"), ("elm", "plant")]
    data = load_labelled(write_format(tmp_path, "csv", rows))
    with pytest.raises(InputFileError) as caught:
        make_splits(data)
    assert "'plant' has 2 example(s)" in str(caught.value) and caught.value.line == 12


def test_split_is_stratified_seeded_and_disjoint(tmp_path: Path) -> None:
    shutil.copy(WORDNET_SAMPLE, tmp_path / "d.csv")
    data = load_labelled(tmp_path / "d.csv")
    first, second = make_splits(data, seed=0), make_splits(data, seed=0)
    assert first.test.lines == second.test.lines and first.train.lines == second.train.lines
    assert make_splits(data, seed=1).test.lines != first.test.lines
    lines = [set(s.lines) for s in (first.train, first.validation, first.test)]
    assert not (lines[0] & lines[1] or lines[0] & lines[2] or lines[1] & lines[2])
    assert len(first.test) == 240 and all(first.test.labels.count(label) == 24 for label in set(data.labels))
    small = make_splits(data, train_fraction=0.1, seed=0)
    assert small.test.lines == first.test.lines  # the label budget never changes the test split
    assert len(small.train) + len(small.validation) == 100
