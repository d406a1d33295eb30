"""The README's "Using it" block, run command by command (data paths and ports adjusted to the test's), so
the README cannot drift from the CLI; and `tlserve test` gives `tlserve train`'s own test figures."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ROOT, WORDNET_SAMPLE, free_port

LABELS = ("noun.animal", "noun.artifact", "noun.person", "noun.plant")


def _block() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Using it\n"):]
    start = section.index("```bash\n") + len("```bash\n")
    lines = section[start:section.index("```", start)].splitlines()
    return [re.sub(r"\s+#.*$", "", line).strip() for line in lines if line.strip()]


def _sample(path: Path, rows: slice) -> Path:
    with WORDNET_SAMPLE.open(encoding="utf-8") as handle:
        by_label: dict[str, list[str]] = {}
        for row in csv.DictReader(handle):
            if row["label"] in LABELS:
                by_label.setdefault(row["label"], []).append(row["text"])
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for label, texts in by_label.items():
            writer.writerows([text, label] for text in texts[rows])
    return path


def test_every_command_of_the_readmes_using_it_block_runs(tmp_path: Path) -> None:
    import gensim

    glove = Path(gensim.__file__).parent / "test" / "test_data" / "test_glove.txt"
    _sample(tmp_path / "tickets.csv", slice(0, 40))
    _sample(tmp_path / "held-out.csv", slice(80, 100))
    (tmp_path / "texts.txt").write_text("a small furry animal\na tool for cutting wood\n", encoding="utf-8")
    pq.write_table(pa.table({"text": ["a tall tree", "a kind person"]}), tmp_path / "backlog.parquet")
    ports = {"TLSERVE_PORT": free_port(), "TLSERVE_HTTP_PORT": free_port(), "TLSERVE_METRICS_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()},
           "TLSERVE_TARGET": f"127.0.0.1:{ports['TLSERVE_PORT']}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = None
    ran = []
    try:
        for line in _block():
            words = shlex.split(line)
            if words[0] == "source":  # activating the venv: this test runs with the venv's bin first on PATH
                continue
            words = [str(glove) if w == "glove.6B.300d.txt" else w for w in words]
            if words[:2] == ["tlserve", "data"]:
                words += ["--root", str(ROOT / "data")]  # the checkout's cache, which the suite fills
            if words[-1] == "&":
                server = subprocess.Popen(words[:-1], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
                ran.append(line)
                continue
            result = subprocess.run(words, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-2000:])
            ran.append(line)
            if words[1] == "classify":
                answer = json.loads(result.stdout.splitlines()[0])
                assert answer["label"] in LABELS and len(answer["labels"]) == 3
            if words[1] == "test":
                assert "accuracy" in result.stdout and "P@3" in result.stdout
            if words[1] == "predict":
                assert len(result.stdout.splitlines()) == 2
                assert all(" because: " in line for line in result.stdout.splitlines())  # --explain 3
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            assert server.wait(60) == 0, server.stderr.read() if server.stderr else ""
    assert len(ran) == len(_block()) - 1
    assert pq.read_table(tmp_path / "scored.parquet").num_rows == 2


def test_tlserve_test_gives_the_training_reports_test_figures(tmp_path: Path) -> None:
    import gensim

    glove = Path(gensim.__file__).parent / "test" / "test_data" / "test_glove.txt"
    train, held_out = _sample(tmp_path / "train.csv", slice(0, 40)), _sample(tmp_path / "test.csv", slice(80, 100))
    cli = [sys.executable, "-m", "tlserve.cli"]
    subprocess.run([*cli, "vectors", "import", str(glove), "--format", "glove", "--out", str(tmp_path / "store"),
                    "--no-progress"], check=True, capture_output=True)
    subprocess.run([*cli, "train", "--data", str(train), "--test-data", str(held_out), "--vectors",
                    str(tmp_path / "store"), "--repository", str(tmp_path / "models"), "--model", "m", "--no-progress",
                    "--mode", "frozen", "--epochs", "4", "--calibration-folds", "1"], check=True, capture_output=True)
    manifest = json.loads((tmp_path / "models" / "m" / "1" / "manifest.json").read_text())
    tested = subprocess.run([*cli, "test", "--model", str(tmp_path / "models" / "m"), "--data", str(held_out),
                             "--json"], check=True, capture_output=True, text=True)
    figures = json.loads(tested.stdout)
    assert figures["examples"] == manifest["metrics"]["test_examples"] == 80
    assert abs(figures["accuracy"] - manifest["metrics"]["test_accuracy"]) < 1e-6
    assert abs(figures["macro_f1"] - manifest["metrics"]["test_macro_f1"]) < 1e-6
    assert figures["at_k"]["1"] == [figures["accuracy"], figures["accuracy"]]
