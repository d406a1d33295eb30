"""The benchmark's load generator against a real (no-op) gRPC server on loopback."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tlserve.bench import systems
from tlserve.bench.harness import BenchConfig, acceptance
from tlserve.bench.loadgen import LOAD_CONTEXT, LoadSpec, run_load

TEXTS = [f"a small text number {i}" for i in range(100)]


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory) -> systems.Running:
    running = systems.start_ceiling("ceiling", 1, 10, tmp_path_factory.mktemp("logs"))
    yield running
    running.stop()


def test_closed_loop_counts_calls_and_latencies(ceiling: systems.Running) -> None:
    result = run_load(LoadSpec(target=ceiling.target, model="m", shape="unary", texts_per_call=4, texts=TEXTS,
                               seconds=1.0, concurrency=4, warmup_seconds=0.3))
    summary = result.summary()
    assert result.errors == 0 and result.calls > 50
    assert len(result.latencies_ms) == result.calls
    assert summary["texts_per_s"] == pytest.approx(4 * summary["calls_per_s"], rel=1e-3)
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


def test_open_loop_keeps_its_schedule_and_charges_a_stall_to_the_server(ceiling: systems.Running) -> None:
    """The server is frozen for 0.4 s inside the measured window: the calls due meanwhile are still
    sent on time and their latency counts from when they were due, so the stall shows in the tail.
    The stall starts when the load generator says its window began (client processes take a
    while to start on a busy machine), not after a guessed delay."""
    pid = ceiling.process.pid
    measuring = LOAD_CONTEXT.Event()
    stalled = threading.Event()

    def stall() -> None:
        if not measuring.wait(120):
            return
        time.sleep(0.3)
        os.kill(pid, signal.SIGSTOP)
        stalled.set()
        time.sleep(0.4)
        os.kill(pid, signal.SIGCONT)

    threading.Thread(target=stall, daemon=True).start()
    result = run_load(LoadSpec(target=ceiling.target, model="m", shape="unary", texts_per_call=1, texts=TEXTS,
                               seconds=2.0, rate=200, warmup_seconds=0.3), measuring)
    assert stalled.is_set(), "the measured window never began"
    assert result.errors == 0
    assert result.calls == pytest.approx(400, rel=0.1)  # 200/s for 2 s, whatever the server did
    assert max(result.latencies_ms) >= 300  # a closed loop would have hidden the stall
    # Only the calls due around the stall carry it (about 0.4 s of 2 s), not the whole run.
    assert sum(latency >= 300 for latency in result.latencies_ms) < len(result.latencies_ms) / 2


def test_acceptance_reads_ratios_from_medians(tmp_path: Path) -> None:
    def point(calls: float, p50: float, p99: float) -> dict[str, dict[str, float]]:
        return {"median": {"calls_per_s": calls, "texts_per_s": calls, "p50_ms": p50, "p99_ms": p99}}

    report = {
        "results": {"unary-1|tlserve-1w|c=1": point(800, 1.2, 2.0), "unary-1|ceiling-1w|c=1": point(1000, 1.0, 1.5),
                    "unary-1|mlserver-v2|c=1": point(300, 3.0, 5.0)},
        "in_process": {"compute_ceiling_256": {"texts_per_s": 1000.0}},
        "memory": [{"workers": 1, "models": ["a"], "total_pss_mb": 100.0},
                   {"workers": 2, "models": ["a", "b"], "total_pss_mb": 131.0}],
        "wall_seconds": 100.0,
    }
    checks = acceptance(report, BenchConfig(concurrency=[1], out=tmp_path / "b.json"))
    by_target = {(c["target"], round(c["value"], 3)): c["met"] for c in checks}
    assert by_target[(">= 0.7", 0.8)] is True
    assert by_target[(">= 2 and lower p99", 2.667)] is True
    assert by_target[("<= 1.5", 1.2)] is True
    assert by_target[("<= 1.3", 1.31)] is False
