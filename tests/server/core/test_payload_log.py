"""The payload log: sampled calls as JSON lines, written off the request path, readable by the trainer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

from conftest import ServerProcess, Trained, metric, sample_texts, start_server


async def _calls(server: ServerProcess, texts: list[list[str]], concurrency: int = 16) -> list[str]:
    """Sends each list of texts as one call to wn-frozen; returns the failures."""
    from tlserve.client import AsyncClassifier

    failures: list[str] = []
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for batch in texts:
        queue.put_nowait(batch)

    async def worker() -> None:
        async with AsyncClassifier(server.target, model="wn-frozen", retries=0) as client:
            while not queue.empty():
                batch = queue.get_nowait()
                try:
                    await client.classify(batch)
                except Exception as exc:
                    failures.append(repr(exc))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def test_a_tenth_of_ten_thousand_calls_is_logged_with_every_field(trained: Trained, tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    proc = start_server(trained.repository, tmp_path / "s.log", "--payload-log", str(path),
                        "--payload-log-rate", "0.1")
    texts = [f"a small animal number {i}" for i in range(10_000)]
    try:
        assert asyncio.run(_calls(proc, [[t] for t in texts])) == []
    finally:
        assert proc.stop() == 0  # the log is flushed and closed on the way out
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    sd = math.sqrt(10_000 * 0.1 * 0.9)
    print(f"payload log: {len(lines)} lines for 10,000 calls at rate 0.1 (expected 1,000 +- {3 * sd:.0f})")
    assert abs(len(lines) - 1000) <= 3 * sd
    sent = set(texts)
    labels = None
    for line in lines:
        assert set(line) == {"time", "model", "version", "text", "predicted", "probabilities", "token_count",
                             "oov_fraction", "label"}
        assert line["model"] == "wn-frozen" and line["version"] == 1 and line["label"] is None
        assert line["text"] in sent and line["token_count"] >= 4 and 0.0 <= line["oov_fraction"] <= 1.0
        labels = labels or list(line["probabilities"])
        assert list(line["probabilities"]) == labels and line["predicted"] in labels
        assert abs(sum(line["probabilities"].values()) - 1.0) < 1e-4
        assert line["predicted"] == max(line["probabilities"], key=line["probabilities"].__getitem__)
    assert len({line["text"] for line in lines}) == len(lines)  # each sampled call once


def test_hashed_texts_and_a_log_that_cannot_be_written_never_fail_a_call(trained: Trained, tmp_path: Path) -> None:
    path = tmp_path / "hashed.jsonl"
    proc = start_server(trained.repository, tmp_path / "s.log", "--payload-log", str(path),
                        "--payload-log-rate", "1", "--payload-log-hash")
    try:
        assert asyncio.run(_calls(proc, [["a young horse"], ["a large body of salt water"]], 1)) == []
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["text_sha256"] for line in lines] == [hashlib.sha256(t.encode()).hexdigest()
                                                       for t in ("a young horse", "a large body of salt water")]
    assert all("text" not in line for line in lines)

    # A full disk (a log that cannot be opened at all stops the start-up: tests/server/core/test_store_faults.py).
    for unwritable in ("/dev/full",):
        proc = start_server(trained.repository, tmp_path / "u.log", "--payload-log", unwritable,
                            "--payload-log-rate", "1")
        try:
            assert asyncio.run(_calls(proc, [["a young horse", "a dog"]] * 200, 4)) == []
            dropped = 0.0
            for _ in range(200):  # the writer thread counts what it could not write
                dropped = metric(proc, "tlserve_payload_log_dropped_total", reason="write_error")
                if dropped >= 400:
                    break
                asyncio.run(asyncio.sleep(0.05))
            assert dropped == 400, (unwritable, dropped)
            assert metric(proc, "tlserve_requests_total", code="OK") >= 200
        finally:
            assert proc.stop() == 0
        assert "cannot be written" in proc.output()


def test_the_log_trains_the_next_version(trained: Trained, glove_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "payloads.jsonl"
    proc = start_server(trained.repository, tmp_path / "s.log", "--payload-log", str(path),
                        "--payload-log-rate", "1")
    texts = sample_texts(1200)
    try:
        assert asyncio.run(_calls(proc, [texts[i:i + 10] for i in range(0, len(texts), 10)], 4)) == []
    finally:
        assert proc.stop() == 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(line["text"] for line in lines) == sorted(texts)
    # A person labels two thirds of the lines (here: with the model's answer); the rest stay null.
    for i, line in enumerate(lines):
        if i % 3:
            line["label"] = line["predicted"]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    repository = tmp_path / "next"
    command = [sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "train", "--data", str(path),
               "--vectors", str(glove_store), "--repository", str(repository), "--model", "relabelled",
               "--mode", "frozen", "--epochs", "4", "--calibration-folds", "1", "--no-progress"]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and f"{path}:1: field 'label' is null" in refused.stderr, refused.stderr
    done = subprocess.run([*command, "--unlabelled", "skip"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads((repository / "relabelled" / "1" / "report.json").read_text())
    assert sum(report["data"]["examples"].values()) == 800  # the labelled lines only
