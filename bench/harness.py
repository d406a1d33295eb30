"""`tlserve bench`: every system side by side in one run, medians over repeats, ratios against the targets.

Plan of a run (all servers on 127.0.0.1, started and stopped here):
1. prepare: GloVe-50d store and the WordNet task (`tlserve data`), two frozen bundles over the
   one store (trained in a subprocess, cached under data/bench/);
2. in-process references: the compute ceiling (batch 1 and 256) and fastText `predict`;
3. start tlserve (1 and N workers), the gRPC ceiling (1 and N processes), the naive approach
   and MLServer; then, `repeats` times, each point for each system in a rotated order:
   1 text per call over the concurrency sweep (native, stream and V2 shapes), 256 texts per
   call, and an open-loop run at half of tlserve's peak;
4. tlserve's per-stage times from its metrics, memory (RSS/PSS) and cold start;
5. JSON + PNG under bench/results/ and a table with the acceptance ratios.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlserve.bench import systems
from tlserve.bench.loadgen import LoadSpec, run_load

_LOGGER = logging.getLogger(__name__)

ROOT = systems.ROOT
MODELS = ("bench-a", "bench-b")


@dataclass
class BenchConfig:
    """What one run measures."""

    out: Path = ROOT / "bench" / "results" / "bench.json"
    """JSON result; the figure goes beside it with the .png suffix."""
    data: Path = ROOT / "data"
    """Where the demo data, the bench bundles and the work files live (ignored by git)."""
    quick: bool = False
    """The preset that finishes in about 3 minutes (set its values with apply_quick())."""
    seconds: float = 5.0
    """Measured seconds per point (after a 1 s warm-up)."""
    repeats: int = 3
    """Each point is run this many times; medians are reported."""
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    """Closed-loop sweep of callers in flight."""
    workers: int = 2
    """Process count of the multi-process tlserve and gRPC ceiling."""
    client_processes: int = 2
    """Load-generator processes."""
    systems: list[str] = field(default_factory=lambda: ["tlserve", "ceiling", "naive", "mlserver", "fasttext"])
    """Which systems to run (tlserve always runs)."""
    memory: bool = True
    cold_starts: int = 3

    def apply_quick(self) -> None:
        self.seconds, self.repeats, self.concurrency, self.cold_starts = 2.0, 1, [1, 16], 1


def prepare(config: BenchConfig) -> dict[str, Any]:
    from tlserve.core.bundle import versions_of
    from tlserve.trainer.fetch_data import prepare as prepare_data

    made = prepare_data(config.data, ["wordnet"])
    repository = config.data / "bench" / "repository"
    for seed, model in enumerate(MODELS):
        if versions_of(repository / model):
            continue
        _LOGGER.warning("training %s (frozen, 10%% of the WordNet labels; first run only)", model)
        # A subprocess: TensorFlow and its thread pools stay out of the measuring process.
        subprocess.run([sys.executable, "-m", "tlserve.cli", "--log-level", "WARNING", "train", "--data",
                        str(made["wordnet"]), "--vectors", str(made["vectors"]), "--repository", str(repository),
                        "--model", model, "--mode", "frozen", "--train-fraction", "0.1", "--seed", str(seed),
                        "--no-progress"],
                       check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    with open(made["wordnet"], newline="", encoding="utf-8") as handle:
        rows = [(row["text"], row["label"]) for row in csv.DictReader(handle)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    bundle = repository / MODELS[0] / str(max(versions_of(repository / MODELS[0])))
    return {"repository": repository, "bundle": bundle, "store": made["vectors"], "task": made["wordnet"],
            "rows": rows, "texts": [text for text, _ in rows]}


@dataclass
class Point:
    """One measured configuration: a system, a request shape, texts per call and a load."""

    system: str
    target: str
    model: str
    shape: str
    texts_per_call: int
    concurrency: int = 0
    rate: float = 0.0
    group: str = ""

    def key(self) -> str:
        load = f"rate={self.rate:.0f}" if self.rate else f"c={self.concurrency}"
        return f"{self.group}|{self.system}|{load}"


def _median_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(statistics.median(s[key] for s in summaries)), 3) for key in summaries[0]}


def _measure(points: list[Point], config: BenchConfig, texts: list[str], repeat: int,
             results: dict[str, list[dict[str, float]]]) -> None:
    shift = repeat % max(1, len(points))
    for point in points[shift:] + points[:shift]:  # rotate, so no system always runs first
        seconds = config.seconds * (2 if point.rate else 1)
        if point.system == "naive":
            seconds = max(2.0, config.seconds / 2)  # it is slow; fewer calls suffice
        spec = LoadSpec(target=point.target, model=point.model, shape=point.shape,
                        texts_per_call=point.texts_per_call, texts=texts, seconds=seconds,
                        concurrency=point.concurrency, rate=point.rate, processes=config.client_processes,
                        timeout=30.0)
        summary = run_load(spec).summary()
        results[point.key()].append(summary)
        _LOGGER.warning("%-44s %s", point.key(), summary)


def _stage_breakdown(before: str, after: str, model: str) -> dict[str, float]:
    """Mean seconds per batch (or per call) of each server stage, from two scrapes of the metrics."""
    then, now = systems.timings(before, model), systems.timings(after, model)

    def mean(key: str, scale: float = 1000.0, digits: int = 4) -> float:
        return round(scale * systems.mean_between(then, now, key)[0], digits)

    out = {f"{stage}_ms_mean": mean(stage) for stage in ("encode", "inference", "respond")}
    out["queue_ms_mean"] = mean("queue")
    out["batch_size_mean"] = mean("batch_size", scale=1.0, digits=2)
    out["server_ms_per_call"] = mean("call:Classify")
    return out


def run(config: BenchConfig) -> dict[str, Any]:
    began = time.perf_counter()
    work = config.data / "bench" / "work"
    logs = work / "logs"
    data = prepare(config)
    texts = data["texts"]
    report: dict[str, Any] = {
        # Paths inside the checkout as relative ones: the results describe the run, not this machine's folders.
        "config": {k: systems.shown(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "model": {"bundle": systems.shown(data["bundle"]), "mode": "frozen", "labels": 10},
    }
    _LOGGER.warning("in-process references")
    report["in_process"] = {
        "compute_ceiling_1": systems.compute_ceiling(data["bundle"], texts, 1, config.seconds),
        "compute_ceiling_256": systems.compute_ceiling(data["bundle"], texts, 256, config.seconds),
    }
    if "fasttext" in config.systems:
        report["in_process"]["fasttext_1"] = systems.fasttext_speed(data["rows"], texts, config.seconds, work)

    running: dict[str, systems.Running] = {}
    try:
        running["tlserve-1w"] = systems.start_tlserve("tlserve-1w", data["repository"], 1, logs)
        running[f"tlserve-{config.workers}w"] = systems.start_tlserve(f"tlserve-{config.workers}w",
                                                                      data["repository"], config.workers, logs)
        if "ceiling" in config.systems:
            running["ceiling-1w"] = systems.start_ceiling("ceiling-1w", 1, 10, logs)
            running[f"ceiling-{config.workers}w"] = systems.start_ceiling(f"ceiling-{config.workers}w",
                                                                          config.workers, 10, logs)
        if "naive" in config.systems:
            running["naive"] = systems.start_naive(data["store"], data["task"], MODELS[0], logs)
        if "mlserver" in config.systems:
            running["mlserver"] = systems.start_mlserver(data["bundle"], MODELS[0], work, logs)
        report["servers"] = {name: r.target for name, r in running.items()}
        model = MODELS[0]

        def point(system: str, server: str, shape: str, n: int, group: str, **load: Any) -> Point | None:
            if server not in running:
                return None
            return Point(system, running[server].target, model, shape, n, group=group, **load)

        nw = f"{config.workers}w"
        sweep: list[Point | None] = []
        for c in config.concurrency:
            sweep += [
                point("tlserve-1w", "tlserve-1w", "unary", 1, "unary-1", concurrency=c),
                point("ceiling-1w", "ceiling-1w", "unary", 1, "unary-1", concurrency=c),
                point(f"tlserve-{nw}", f"tlserve-{nw}", "unary", 1, "unary-1", concurrency=c),
                point(f"ceiling-{nw}", f"ceiling-{nw}", "unary", 1, "unary-1", concurrency=c),
                point("tlserve-v2-1w", "tlserve-1w", "v2", 1, "unary-1", concurrency=c),
                point("mlserver-v2", "mlserver", "v2", 1, "unary-1", concurrency=c),
                point("tlserve-stream-1w", "tlserve-1w", "stream", 1, "unary-1", concurrency=c),
                point("ceiling-stream-1w", "ceiling-1w", "stream", 1, "unary-1", concurrency=c),
            ]
            if c <= 4:
                sweep.append(point("naive", "naive", "unary", 1, "unary-1", concurrency=c))
        sweep += [
            point("tlserve-1w", "tlserve-1w", "unary", 256, "unary-256", concurrency=2),
            point(f"tlserve-{nw}", f"tlserve-{nw}", "unary", 256, "unary-256", concurrency=4),
            point("ceiling-1w", "ceiling-1w", "unary", 256, "unary-256", concurrency=2),
        ]
        points = [p for p in sweep if p is not None]
        results: dict[str, list[dict[str, float]]] = defaultdict(list)
        before = systems.scrape(running["tlserve-1w"].metrics_port)
        for repeat in range(config.repeats):
            _measure(points, config, texts, repeat, results)
        after = systems.scrape(running["tlserve-1w"].metrics_port)
        report["breakdown_tlserve_1w"] = _stage_breakdown(before, after, model)

        peaks = [statistics.median(s["calls_per_s"] for s in results[p.key()]) for p in points
                 if p.system == "tlserve-1w" and p.group == "unary-1"]
        rate = max(peaks) / 2
        open_points = [p for p in (point("tlserve-1w", "tlserve-1w", "unary", 1, "open-1", rate=rate),
                                   point("ceiling-1w", "ceiling-1w", "unary", 1, "open-1", rate=rate)) if p]
        for repeat in range(config.repeats):
            _measure(open_points, config, texts, repeat, results)
        report["open_loop_rate"] = round(rate, 1)
        report["results"] = {key: {"median": _median_summary(runs), "repeats": runs} for key, runs in results.items()}
    finally:
        for server in running.values():
            server.stop()

    if config.memory:
        from tlserve.bench.memory_footprint import measure

        sample = texts[:5000]
        report["memory"] = [
            {k: v for k, v in measure(data["repository"], workers, sample, list(MODELS[:models])).items()
             if k != "processes"}
            for workers in (1, config.workers) for models in (1, 2)
        ]
    report["cold_start_seconds"] = systems.cold_start(data["repository"], config.cold_starts, logs)
    report["wall_seconds"] = round(time.perf_counter() - began, 1)
    report["acceptance"] = acceptance(report, config)
    config.out.parent.mkdir(parents=True, exist_ok=True)
    config.out.write_text(json.dumps(report, indent=1) + "\n")
    from tlserve.bench.report import figure, markdown, table

    figure(report, config.out.with_suffix(".png"))
    config.out.with_suffix(".md").write_text(markdown(report))
    print(table(report))
    return report


def acceptance(report: dict[str, Any], config: BenchConfig) -> list[dict[str, Any]]:
    """The issue's targets as measured ratios (medians from this run)."""
    results = {key: value["median"] for key, value in report["results"].items()}
    nw = f"{config.workers}w"
    checks: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: str, ok: bool | None) -> None:
        checks.append({"check": name, "value": None if value is None else round(value, 3), "target": target,
                       "met": ok})

    def get(system: str, c: int, group: str = "unary-1") -> dict[str, float] | None:
        return results.get(f"{group}|{system}|c={c}")

    def throughput(name: str, a: dict[str, float] | None, b: dict[str, float] | None, least: float,
                   lower_p99: bool) -> None:
        """The check that `a` answers at least `least` times the calls per second of `b` (and with a lower p99)."""
        if not (a and b):
            return
        ratio = a["calls_per_s"] / b["calls_per_s"]
        if lower_p99:
            add(f"{name} throughput (p99 {a['p99_ms']} vs {b['p99_ms']} ms)", ratio, f">= {least:g} and lower p99",
                ratio >= least and a["p99_ms"] < b["p99_ms"])
        else:
            add(f"{name} throughput", ratio, f">= {least:g}", ratio >= least)

    for c in config.concurrency:
        for tl, ceiling in (("tlserve-1w", "ceiling-1w"), (f"tlserve-{nw}", f"ceiling-{nw}")):
            throughput(f"1 text/call, c={c}: {tl} / {ceiling}", get(tl, c), get(ceiling, c), 0.7, False)
        mlserver = get("mlserver-v2", c)
        throughput(f"1 text/call, c={c}: tlserve-1w / MLServer", get("tlserve-1w", c), mlserver, 2, True)
        throughput(f"1 text/call, c={c}: tlserve V2 / MLServer V2", get("tlserve-v2-1w", c), mlserver, 2, False)
        throughput(f"1 text/call, c={c}: tlserve-1w / naive approach", get("tlserve-1w", c), get("naive", c), 50,
                   True)
    a, b = get("tlserve-1w", 1), get("ceiling-1w", 1)
    if a and b:
        ratio = a["p50_ms"] / b["p50_ms"]
        add("1 text/call, c=1: tlserve-1w p50 / ceiling-1w p50", ratio, "<= 1.5", ratio <= 1.5)
    a = results.get("unary-256|tlserve-1w|c=2")
    compute = report["in_process"]["compute_ceiling_256"]
    if a:
        ratio = a["texts_per_s"] / compute["texts_per_s"]
        add("256 texts/call: tlserve-1w / compute ceiling texts/s", ratio, ">= 0.5", ratio >= 0.5)
    rate = report.get("open_loop_rate", 0)
    a = results.get(f"open-1|tlserve-1w|rate={rate:.0f}")
    if a:
        add(f"open loop at {rate:.0f} calls/s (half of peak): tlserve-1w p99 ms", a["p99_ms"], "<= 5",
            a["p99_ms"] <= 5)
    memory = {(m["workers"], len(m["models"])): m["total_pss_mb"] for m in report.get("memory", [])}
    if (1, 1) in memory and (config.workers, 2) in memory:
        ratio = memory[(config.workers, 2)] / memory[(1, 1)]
        add(f"PSS {config.workers} workers x 2 models / 1 worker x 1 model", ratio, "<= 1.3", ratio <= 1.3)
    if config.quick:
        add("--quick wall seconds", report["wall_seconds"], "<= 180", report["wall_seconds"] <= 180)
    return checks
