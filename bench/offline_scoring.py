"""Offline scoring of a large backlog: `tlserve score` with the local engine and with Ray, side by side.

    python -m tlserve.bench.offline_scoring --repository R --model M [--rows 1000000] [--out FILE]

Builds a Parquet backlog of WordNet glosses, repeated and shuffled to `--rows` rows, then:

- the compute ceiling: one process running the model's `Scorer` over the texts in batches, with
  no reading or writing (texts/s of the scoring alone);
- `tlserve score --engine local` with 1 and 2 worker processes;
- `tlserve score --engine ray` with 1 and 2 actors, joining by address a Ray cluster started for
  the run with `ray start --head` as its own processes (loopback only, token authentication) and
  stopped after it.

Every output must equal the first one row for row, and the first one must answer a seeded
sample of rows as `tlserve serve` does (labels equal, probabilities within 1e-6). Rates are
rows over the job's own time (reading, scoring and writing; for Ray, joining the cluster and
starting the actors too) and over the whole command.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.bench.systems import free_port, start_tlserve

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = 10_000


def make_backlog(task: Path, rows: int, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with task.open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    order = np.random.default_rng(0).integers(0, len(texts), rows)
    pq.write_table(pa.table({"ticket": [f"t{i}" for i in range(rows)], "text": [texts[i] for i in order]}), out)


def compute_ceiling(folder: Path, repository: Path, backlog: Path, batch_size: int) -> dict[str, float]:
    import pyarrow.parquet as pq

    from tlserve.core.scorer import Scorer

    scorer = Scorer.open(folder, repository)
    texts = pq.read_table(backlog, columns=["text"]).column("text").to_pylist()
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        scorer.predict(texts[start : start + batch_size])
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "rows_per_second": round(len(texts) / seconds)}


def run_score(model: str, backlog: Path, out: Path, engine: str, workers: int, batch_size: int,
              env: dict[str, str], address: str | None = None) -> dict[str, Any]:
    command = [sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "score", "--no-progress",
               "--engine", engine, "--workers", str(workers), "--batch-size", str(batch_size), "--model", model,
               "--input", str(backlog), "--output", str(out), "--id-column", "ticket",
               *(["--address", address] if address else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    summary = json.loads(result.stdout)
    return {"engine": engine, "workers": workers, "rows": summary["rows"], "scored": summary["scored"],
            "seconds": summary["seconds"], "rows_per_second": summary["rows_per_second"],
            "command_seconds": round(wall, 2), "command_rows_per_second": round(summary["scored"] / wall)}


def check_against_server(repository: Path, model: str, output: Path, logs: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from tlserve.client import Classifier

    table = pq.read_table(output)
    rows = np.sort(np.random.default_rng(1).choice(table.num_rows, min(SAMPLE, table.num_rows), replace=False))
    sample = table.take(rows).to_pylist()
    server = start_tlserve("offline-scoring-server", repository, 1, logs)
    try:
        texts = [row["text"] for row in sample]
        answers = []
        with Classifier(server.target, model=model, timeout=60) as client:
            for start in range(0, len(texts), 512):
                answers.extend(client.classify(texts[start : start + 512], top_k=3))
    finally:
        server.stop()
    worst = 0.0
    labels_equal = True
    for row, answer in zip(sample, answers, strict=True):
        labels_equal &= row["labels"] == [p.label for p in answer.labels]
        for ours, theirs in zip(row["probabilities"], answer.labels, strict=True):
            worst = max(worst, abs(ours - theirs.probability))
    return {"sample_rows": len(sample), "labels_equal": labels_equal, "max_probability_difference": worst}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--task", type=Path, default=Path("data/tasks/wordnet-nouns-top10.csv"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("data/bench/offline-scoring"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/offline-scoring.json"))
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    from tlserve.offline.job import resolve_model

    args.work.mkdir(parents=True, exist_ok=True)
    backlog = args.work / f"backlog-{args.rows}.parquet"
    if not backlog.exists():
        make_backlog(args.task, args.rows, backlog)
    spec = str(args.repository / args.model)
    repository, folder = resolve_model(spec)
    # Ray on loopback only, with a token shared by the cluster and the job (none written to a file).
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    results: dict[str, Any] = {"model": str(folder), "rows": args.rows, "batch_size": args.batch_size,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    print("compute ceiling ...", file=sys.stderr)
    results["ceiling_one_process"] = compute_ceiling(folder, repository, backlog, args.batch_size)
    runs: list[dict[str, Any]] = []
    outputs: list[Path] = []
    for workers in (1, 2):
        print(f"local engine, {workers} worker(s) ...", file=sys.stderr)
        out = args.work / f"local-{workers}.parquet"
        runs.append(run_score(spec, backlog, out, "local", workers, args.batch_size, env))
        outputs.append(out)
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
                    str(os.cpu_count() or 1), "--include-dashboard", "false", "--disable-usage-stats",
                    "--temp-dir", temp], check=True, capture_output=True, env=env)
    try:
        for workers in (1, 2):
            print(f"ray engine, {workers} actor(s) ...", file=sys.stderr)
            out = args.work / f"ray-{workers}.parquet"
            runs.append(run_score(spec, backlog, out, "ray", workers, args.batch_size, env, f"127.0.0.1:{port}"))
            outputs.append(out)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=env)
        shutil.rmtree(temp, ignore_errors=True)
    results["runs"] = runs
    first = pq.read_table(outputs[0])
    results["outputs_identical"] = all(pq.read_table(out).equals(first) for out in outputs[1:])
    # The output holds no text: the server is asked the backlog's texts at the sampled rows.
    texts = pq.read_table(backlog, columns=["text"]).column("text")
    with_text = first.append_column("text", texts)
    checked = args.work / "with-text.parquet"
    pq.write_table(with_text, checked)
    print("server check ...", file=sys.stderr)
    results["server_check"] = check_against_server(args.repository, args.model, checked, args.work / "logs")
    rate = {(r["engine"], r["workers"]): r["rows_per_second"] for r in runs}
    results["ratios"] = {
        "local_2_over_1": round(rate[("local", 2)] / rate[("local", 1)], 2),
        "ray_2_over_local_2": round(rate[("ray", 2)] / rate[("local", 2)], 2),
        "ray_1_over_local_1": round(rate[("ray", 1)] / rate[("local", 1)], 2),
        "local_1_over_ceiling": round(rate[("local", 1)] / results["ceiling_one_process"]["rows_per_second"], 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
