"""`tlserve vectors adapt` (gensim on the user's own text) and `tlserve evaluate` (repeated seeded splits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlserve.bench.accuracy import merge
from tlserve.core.vector_store import VectorStore
from tlserve.trainer.config import TrainConfig
from tlserve.trainer.evaluate import EvaluateConfig, checkpoint, run
from tlserve.trainer.peers import WORD_CHAR_C

from conftest import WORDNET_SAMPLE


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", *args],
                          capture_output=True, text=True, timeout=900)


def test_adapt_moves_corpus_words_adds_new_ones_and_keeps_the_rest(glove_store: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    # In-domain text: "zorblat" is a new word used like "cat"; "the" and "cat" are known words.
    lines = [f"the {a} zorblat chased the {b} cat" for a in ("small", "big", "old") for b in ("grey", "young")]
    corpus.write_text("\n".join(lines * 40) + "\n", encoding="utf-8")
    out = tmp_path / "adapted"
    done = _cli("vectors", "adapt", "--vectors", str(glove_store), "--corpus", str(corpus), "--out", str(out),
                "--min-count", "2", "--epochs", "3")
    assert done.returncode == 0, done.stderr
    before, after = VectorStore(glove_store), VectorStore(out)
    assert len(after) == len(before) + 1 and after.vocabulary[-1] == "zorblat"
    rows_before, rows_after = before.index.lookup(["cat", "dog"]), after.index.lookup(["cat", "dog"])
    assert not np.allclose(before.matrix[rows_before[0]], after.matrix[rows_after[0]])  # in the corpus: moved
    assert np.array_equal(before.matrix[rows_before[1]], after.matrix[rows_after[1]])  # not in it: kept
    assert np.isfinite(np.asarray(after.matrix)).all()
    assert "adapted on corpus.txt" in after.manifest.source_name
    again = _cli("vectors", "adapt", "--vectors", str(glove_store), "--corpus", str(corpus), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr  # an existing store is never replaced silently


def test_adapt_names_a_corpus_line_that_is_not_utf8(glove_store: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"fine text\nmore fine text\nbad \xff byte\n")
    done = _cli("vectors", "adapt", "--vectors", str(glove_store), "--corpus", str(corpus),
                "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "corpus.txt:3:" in done.stderr and "not UTF-8" in done.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_repeats_seeded_splits_and_pairs_the_default_with_the_best_peer(glove_store: Path,
                                                                                  tmp_path: Path) -> None:
    out = tmp_path / "results" / "wn.json"
    done = _cli("evaluate", "--data", str(WORDNET_SAMPLE), "--vectors", str(glove_store), "--repeats", "2",
                "--modes", "frozen", "--peers", "tfidf_logreg", "--hidden", "32", "--epochs", "6",
                "--train-fraction", "0.2", "--calibration-folds", "1",
                "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert [split["seed"] for split in result["splits"]] == [0, 1]
    first, second = (split["systems"]["tfidf_logreg"]["accuracy"] for split in result["splits"])
    assert first != second  # different splits, not one split twice
    for split in result["splits"]:
        scores = split["systems"]["tlserve_frozen"]
        assert 0.3 < scores["accuracy"] <= 1.0 and 0.0 <= scores["ece"] <= 1.0 and scores["seconds"] > 0
    summary = result["summary"]
    accuracy = summary["systems"]["tlserve_frozen"]["accuracy"]
    values = [split["systems"]["tlserve_frozen"]["accuracy"] for split in result["splits"]]
    assert accuracy["mean"] == pytest.approx(np.mean(values))
    assert accuracy["sd"] == pytest.approx(np.std(values, ddof=1))
    paired = summary["paired"]
    assert paired["best_peer"] == "tfidf_logreg" and paired["splits"] == 2
    assert paired["mean"] == pytest.approx(np.mean([s["systems"]["tlserve_frozen"]["accuracy"]
                                                    - s["systems"]["tfidf_logreg"]["accuracy"]
                                                    for s in result["splits"]]))
    assert "| tlserve_frozen |" in out.with_suffix(".md").read_text()
    assert not checkpoint(out).exists()  # the finished splits' file goes once the results are written
    # The strong linear peer alone on the same splits, merged into the recorded run as the accuracy table does.
    peer_out = tmp_path / "results" / "wn.rerun.json"
    done = _cli("evaluate", "--data", str(WORDNET_SAMPLE), "--vectors", str(glove_store), "--repeats", "2",
                "--no-modes", "--peers", "tfidf_word_char", "--train-fraction", "0.2", "--out", str(peer_out))
    assert done.returncode == 0, done.stderr
    peer_only = json.loads(peer_out.read_text())
    assert all(set(split["systems"]) == {"tfidf_word_char"} for split in peer_only["splits"])
    merged = merge(peer_only, result)
    for split in merged["splits"]:
        assert set(split["systems"]) == {"tlserve_frozen", "tfidf_logreg", "tfidf_word_char"}
        chosen = split["systems"]["tfidf_word_char"]["chosen"]
        assert chosen["C"] in WORD_CHAR_C and len(chosen["cv_accuracy"]) == len(WORD_CHAR_C)
    assert set(merged["summary"]["systems"]) == {"tlserve_frozen", "tfidf_logreg", "tfidf_word_char"}
    assert merged["summary"]["paired"]["default"] == "tlserve_frozen"
    # The other way round (the peers recorded first, tlserve run after): the default comes from the run.
    into_peers = merge(json.loads(out.read_text()), json.loads(peer_out.read_text()))
    assert into_peers["default"] == "tlserve_frozen"
    assert into_peers["summary"]["paired"]["best_peer"] == "tfidf_word_char"
    other_split = dict(peer_only, splits=[dict(s, seed=s["seed"] + 7) for s in peer_only["splits"]])
    with pytest.raises(ValueError, match="split 0: not the split"):
        merge(other_split, json.loads(out.read_text()))


def test_an_interrupted_evaluation_resumes_after_the_splits_it_finished(glove_store: Path, tmp_path: Path) -> None:
    kept = tmp_path / "wn.splits.jsonl"

    def evaluation(repeats: int, max_tokens: int = 4096) -> EvaluateConfig:
        train = TrainConfig(data=WORDNET_SAMPLE, vectors=glove_store, repository=tmp_path, model="evaluate",
                            train_fraction=0.2, max_tokens=max_tokens, progress=False)
        return EvaluateConfig(train, repeats, modes=[], peers=["tfidf_logreg"])

    # A run stopped after its first split: that split is on disk. Mark it to see whether it is reused.
    run(evaluation(1), checkpoint=kept)
    settings, first = (json.loads(line) for line in kept.read_text().splitlines())
    assert first["seed"] == 0
    first["systems"]["tfidf_logreg"]["accuracy"] = -1.0
    kept.write_text(json.dumps(settings) + "\n" + json.dumps(first) + "\n")
    resumed = run(evaluation(2), checkpoint=kept)
    assert [split["seed"] for split in resumed["splits"]] == [0, 1]
    assert resumed["splits"][0]["systems"]["tfidf_logreg"]["accuracy"] == -1.0  # not run again
    assert resumed["splits"][1]["systems"]["tfidf_logreg"]["accuracy"] > 0.3  # run
    assert len(kept.read_text().splitlines()) == 3
    # Other settings: nothing recorded is reused.
    other = run(evaluation(1, max_tokens=64), checkpoint=kept)
    assert other["splits"][0]["systems"]["tfidf_logreg"]["accuracy"] > 0.3
    assert json.loads(kept.read_text().splitlines()[0])["train"]["max_tokens"] == 64
    # A line cut short by the interruption: the run starts over rather than failing.
    kept.write_text(kept.read_text()[:-20])
    again = run(evaluation(1, max_tokens=64), checkpoint=kept)
    assert again["splits"][0]["systems"]["tfidf_logreg"]["accuracy"] > 0.3


def test_word_char_peer_reads_characters_within_words() -> None:
    """The strong peer generalises to unseen inflections, which word n-grams alone cannot."""
    from tlserve.core.labelled import LabelledData
    from tlserve.trainer.datasets import Splits
    from tlserve.trainer.peers import tfidf_logreg, tfidf_word_char

    stems = {"a": ["walk", "jump", "swim", "climb", "dance", "paint"], "b": ["table", "chair", "lamp", "shelf",
                                                                             "couch", "stool"]}
    train = [(f"{stem}{suffix}", label) for label, words in stems.items() for stem in words for suffix in ("", "s")]
    test = [(f"{stem}ing" if label == "a" else f"{stem}ware", label) for label, words in stems.items()
            for stem in words]
    def part(rows: list[tuple[str, str]]) -> LabelledData:
        return LabelledData([t for t, _ in rows], [label for _, label in rows], list(range(1, len(rows) + 1)),
                            Path("words.csv"))

    splits = Splits(part(train), part(train), part(test))
    truth = np.array([0 if label == "a" else 1 for _, label in test])
    words = tfidf_logreg(splits, ["a", "b"], chinese=False).probabilities.argmax(1)
    both = tfidf_word_char(splits, ["a", "b"], chinese=False).probabilities.argmax(1)
    assert np.mean(both == truth) == 1.0 and np.mean(words == truth) == 0.5
