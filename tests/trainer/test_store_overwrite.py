"""Replacing a vector store keeps what tlserve did not write in its folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlserve.core.vector_store import VectorStore, write_store


def test_overwriting_a_store_keeps_the_users_own_files_in_its_folder(tmp_path: Path) -> None:
    store = tmp_path / "store"
    write_store(store, ["cat", "dog"], np.eye(2, dtype=np.float32), case="lower", source_name="a", source_sha256="0")
    (store / "notes.txt").write_text("where these vectors came from")
    (store / "extra").mkdir()
    (store / "extra" / "eval.csv").write_text("word,score\n")
    write_store(store, ["bird", "fish", "cow"], np.ones((3, 2), np.float32), case="lower", source_name="b",
                source_sha256="0", overwrite=True)
    assert VectorStore(store).vocabulary == ["bird", "fish", "cow"]
    assert (store / "notes.txt").read_text() == "where these vectors came from"
    assert (store / "extra" / "eval.csv").read_text() == "word,score\n"
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "staging debris left behind"
