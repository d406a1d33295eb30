"""`tlserve score`: offline labelling with the served model's scorer, bad rows reported, output atomic."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, WORDNET_SAMPLE, ServerProcess, Trained


def _sample_texts(count: int) -> list[str]:
    with WORDNET_SAMPLE.open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)][:count]


def _score(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score", "--no-progress",
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_scores_equal_the_servers_and_bad_rows_are_listed_by_row(trained: Trained, server: ServerProcess,
                                                                 tmp_path: Path) -> None:
    from tlserve.client import Classifier

    texts = _sample_texts(300)
    source = tmp_path / "backlog.csv"
    good = io.StringIO()
    writer = csv.writer(good, lineterminator="\n")
    writer.writerow(["ticket", "text"])
    writer.writerows([f"t{i}", text] for i, text in enumerate(texts))
    with source.open("wb") as handle:
        handle.write(good.getvalue().encode())
        handle.write(b"bad-utf8,\"caf\xe9 au lait\"\n")  # line 302: Latin-1, not UTF-8
        handle.write(b"empty,\"\"\n")  # line 303
        handle.write(b"long,\"" + b"word " * 4000 + b"\"\n")  # line 304: 20,000 bytes
        handle.write(b"last,\"a small domesticated feline\"\n")
    out = tmp_path / "scored.parquet"
    result = _score("--model", str(trained.repository / "wn-finetune"), "--input", str(source), "--output", str(out),
                    "--id-column", "ticket", "--workers", "2", "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["scored"], summary["bad"]) == (304, 301, 3)
    bad = [json.loads(line) for line in (tmp_path / "scored.errors.jsonl").read_text().splitlines()]
    assert [(b["row"], b["id"]) for b in bad] == [(302, "bad-utf8"), (303, "empty"), (304, "long")]
    assert "UTF-8" in bad[0]["error"] and "empty" in bad[1]["error"] and "16384" in bad[2]["error"]

    table = pq.read_table(out).to_pylist()
    assert [row["id"] for row in table] == [f"t{i}" for i in range(300)] + ["last"]  # input order, ids kept
    assert table[0]["row"] == 2 and table[-1]["row"] == 305
    with Classifier(server.target) as client:
        answers = client.classify([*texts, "a small domesticated feline"], model="wn-finetune", top_k=3)
    for row, answer in zip(table, answers, strict=True):
        assert row["labels"] == [p.label for p in answer.labels]
        assert row["label"] == answer.labels[0].label
        for ours, theirs in zip(row["probabilities"], answer.labels, strict=True):
            assert abs(ours - theirs.probability) <= 1e-6


def test_an_interrupted_job_leaves_no_output(trained: Trained, tmp_path: Path) -> None:
    source = tmp_path / "big.jsonl"
    texts = _sample_texts(1000)
    with source.open("w", encoding="utf-8") as handle:
        for i in range(200_000):
            handle.write(json.dumps({"text": texts[i % len(texts)]}) + "\n")
    out = tmp_path / "scored.parquet"
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score",
                                "--model", str(trained.repository / "wn-frozen"), "--input", str(source),
                                "--output", str(out), "--workers", "1", "--batch-size", "16"],
                               stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stderr is not None
    while "scored" not in process.stderr.read(64):  # the first batches are written
        assert process.poll() is None, "the job ended before it was interrupted"
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]  # no partial files either


@pytest.mark.parametrize("spec, message", [("nowhere/model", "no complete version"),
                                           ("{repo}/wn-frozen:9", "no version '9'")])
def test_a_model_that_is_not_there_is_named(trained: Trained, tmp_path: Path, spec: str, message: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "a cat"}\n')
    result = _score("--model", spec.format(repo=trained.repository), "--input", str(source),
                    "--output", str(tmp_path / "out.parquet"))
    assert result.returncode == 2 and message in result.stderr
