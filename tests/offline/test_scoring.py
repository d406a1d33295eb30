"""`tlserve score`: offline labelling with the served model's scorer, bad rows reported, output atomic."""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, WORDNET_SAMPLE, ServerProcess, Trained, free_port, wait_until


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
    # Rows count data rows (the first under the header is row 1); lines count the file's lines.
    assert [(b["row"], b["line"], b["id"]) for b in bad] == [(301, 302, "bad-utf8"), (302, 303, "empty"),
                                                             (303, 304, "long")]
    assert "UTF-8" in bad[0]["error"] and "empty" in bad[1]["error"] and "16384" in bad[2]["error"]

    table = pq.read_table(out).to_pylist()
    assert [row["id"] for row in table] == [f"t{i}" for i in range(300)] + ["last"]  # input order, ids kept
    assert table[0]["row"] == 1 and table[-1]["row"] == 304
    with Classifier(server.target) as client:
        answers = client.classify([*texts, "a small domesticated feline"], model="wn-finetune", top_k=3)
    for row, answer in zip(table, answers, strict=True):
        assert row["labels"] == [p.label for p in answer.labels]
        assert row["label"] == answer.labels[0].label
        for ours, theirs in zip(row["probabilities"], answer.labels, strict=True):
            assert abs(ours - theirs.probability) <= 1e-6


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_job_leaves_no_output(trained: Trained, tmp_path: Path, workers: int) -> None:
    source = tmp_path / "big.jsonl"
    texts = _sample_texts(1000)
    with source.open("w", encoding="utf-8") as handle:
        for i in range(200_000):
            handle.write(json.dumps({"text": texts[i % len(texts)]}) + "\n")
    out = tmp_path / "scored.parquet"
    # Its own process group, as a terminal's: Ctrl-C reaches the job and its worker processes.
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score",
                                "--model", str(trained.repository / "wn-frozen"), "--input", str(source),
                                "--output", str(out), "--workers", str(workers), "--batch-size", "16"],
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    assert process.stderr is not None
    while "scored" not in process.stderr.read(64):  # the first batches are written
        assert process.poll() is None, "the job ended before it was interrupted"
    # Keep reading what it writes, so that no full pipe can hold it up.
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    drain.start()
    os.killpg(process.pid, signal.SIGINT)
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


# Ray listens on the loopback address only: test traffic stays on this machine.
RAY_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _backlog(path: Path, texts: list[str], rows: int) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"text": texts[i % len(texts)], "key": i}) + "\n")
    return path


# Ray's processes are the machine's: the Ray tests run one after the other in one test process (`ray stop
# --force` ends every Ray process here).
@pytest.mark.xdist_group("ray")
def test_the_ray_engine_answers_row_for_row_as_the_local_engine(trained: Trained, tmp_path: Path) -> None:
    """The local engine's answers are the server's (above); Ray's must be the same rows, bad rows included."""
    source = _backlog(tmp_path / "backlog.jsonl", _sample_texts(300), 1500)
    with source.open("ab") as handle:
        handle.write(b'{"text": "", "key": "empty"}\n')  # line 1501
        handle.write(b'{"text": "caf\xe9", "key": "latin-1"}\n')  # line 1502
        handle.write(b'{"text": "a small domesticated feline", "key": "last"}\n')
    summaries = {}
    for engine in ("local", "ray"):
        result = subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score",
                                 "--no-progress", "--engine", engine, "--workers", "2", "--batch-size", "64",
                                 "--id-column", "key",
                                 "--model", str(trained.repository / "wn-finetune"), "--input", str(source),
                                 "--output", str(tmp_path / f"{engine}.parquet")],
                                capture_output=True, text=True, timeout=600, cwd=ROOT, env=RAY_ENV)
        assert result.returncode == 0, result.stderr[-3000:]
        summaries[engine] = json.loads(result.stdout)
    assert [(s["rows"], s["scored"], s["bad"]) for s in summaries.values()] == [(1503, 1501, 2)] * 2
    local, ray = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert ray.column("row").to_pylist() == [*range(1, 1501), 1503]  # every good row, in file order
    assert ray.equals(local)
    assert (tmp_path / "ray.errors.jsonl").read_text() == (tmp_path / "local.errors.jsonl").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["backlog.jsonl", "local.parquet", "local.errors.jsonl", "ray.parquet", "ray.errors.jsonl"])


def _actor_processes() -> list[int]:
    """Process ids of the scoring actors (Ray names a worker's process after the actor it runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"MapBatches(ScorerActor)" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.xdist_group("ray")
def test_a_ray_actor_killed_mid_run_is_replaced_and_every_row_is_scored(trained: Trained, tmp_path: Path) -> None:
    """A Ray cluster started as its own processes, the job joining it by address; one actor is killed once
    the first rows are written: Ray Data replaces it and runs its batches again, so the job completes."""
    ray = str(Path(sys.executable).with_name("ray"))
    # The cluster and its clients share a token (Ray's token authentication), none written to a file.
    env = {**RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    started = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
                              "--temp-dir", temp], capture_output=True, text=True, timeout=300, env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        rows = 30_000
        source = _backlog(tmp_path / "backlog.jsonl", _sample_texts(1000), rows)
        out = tmp_path / "scored.parquet"
        process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score",
                                    "--engine", "ray", "--address", f"127.0.0.1:{port}", "--workers", "2",
                                    "--batch-size", "32", "--model", str(trained.repository / "wn-finetune"),
                                    "--input", str(source), "--output", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        assert process.stderr is not None
        seen = ""
        while "scored" not in seen:  # the first scored rows are written
            chunk = process.stderr.read(64)
            assert chunk or process.poll() is None, f"the job ended before an actor was killed: {seen[-2000:]}"
            seen += chunk
        # Both actors exist once the pool has started; the second may still be starting when the first writes.
        wait_until(lambda: len(_actor_processes()) == 2 or process.poll() is not None, "both Ray actors started", 300)
        actors = _actor_processes()
        assert len(actors) == 2, actors
        os.kill(actors[0], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        summary = json.loads(stdout)  # Ray's own messages (the lost worker) went to stderr
        assert (summary["rows"], summary["scored"]) == (rows, rows)
        assert actors[0] not in _actor_processes()
        assert pq.read_table(out).column("row").to_pylist() == list(range(1, rows + 1))  # once each, in order
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(temp, ignore_errors=True)
