"""The benchmark's figure (latency against throughput, one curve per system) and its printed table."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def _curves(report: dict[str, Any], group: str) -> dict[str, list[tuple[int, dict[str, float]]]]:
    curves: dict[str, list[tuple[int, dict[str, float]]]] = defaultdict(list)
    for key, value in report["results"].items():
        point_group, system, load = key.split("|")
        if point_group == group and load.startswith("c="):
            curves[system].append((int(load[2:]), value["median"]))
    return {system: sorted(points, key=lambda p: p[0]) for system, points in sorted(curves.items())}


def figure(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    for system, points in _curves(report, "unary-1").items():
        x = [p["calls_per_s"] for _, p in points]
        for axis, key in zip(axes, ("p50_ms", "p99_ms"), strict=True):
            axis.plot(x, [p[key] for _, p in points], marker="o", label=system)
            for c, p in points:
                axis.annotate(str(c), (p["calls_per_s"], p[key]), fontsize=6, xytext=(2, 2),
                              textcoords="offset points")
    for axis, title in zip(axes, ("p50", "p99"), strict=True):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("calls/s (1 text per call; labels: concurrency)")
        axis.set_ylabel(f"{title} latency, ms")
        axis.set_title(f"{title} latency against throughput (medians of {report['config']['repeats']} runs)")
        axis.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(report: dict[str, Any]) -> str:
    lines = [f"{'point':52s} {'calls/s':>9s} {'texts/s':>9s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} "
             f"{'max ms':>8s} {'client cpu':>10s}"]
    for key, value in sorted(report["results"].items()):
        m = value["median"]
        lines.append(f"{key:52s} {m['calls_per_s']:9.1f} {m['texts_per_s']:9.1f} {m['p50_ms']:8.3f} "
                     f"{m['p90_ms']:8.3f} {m['p99_ms']:8.3f} {m['max_ms']:8.2f} {m['client_cpu_cores']:10.2f}")
    lines.append("")
    for name, value in report["in_process"].items():
        lines.append(f"in-process {name:30s} {value['texts_per_s']:10.1f} texts/s  p50 {value['p50_ms']:.4f} ms/call")
    lines.append(f"tlserve-1w stages: {report.get('breakdown_tlserve_1w')}")
    for m in report.get("memory", []):
        lines.append(f"memory: {m['workers']} worker(s) x {len(m['models'])} model(s): total RSS "
                     f"{m['total_rss_mb']} MB, PSS {m['total_pss_mb']} MB")
    lines.append(f"cold start to SERVING: {report['cold_start_seconds']} s")
    lines.append(f"wall: {report['wall_seconds']} s")
    lines.append("")
    for check in report["acceptance"]:
        mark = "MET " if check["met"] else "MISS"
        lines.append(f"[{mark}] {check['check']}: {check['value']} (target {check['target']})")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The README's tables: 1 text per call by concurrency, the other shapes, and the targets."""
    curves = _curves(report, "unary-1")
    concurrency = sorted({c for points in curves.values() for c, _ in points})
    lines = ["| system (1 text per call) | " + " | ".join(f"c={c}: calls/s, p50 / p99 ms" for c in concurrency) + " |",
             "|---|" + "---|" * len(concurrency)]
    for system, points in curves.items():
        by_c = dict(points)
        cells = [f"{by_c[c]['calls_per_s']:.0f}, {by_c[c]['p50_ms']:.2f} / {by_c[c]['p99_ms']:.2f}" if c in by_c
                 else "-" for c in concurrency]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += ["", "| other shapes and references | texts/s | p50 / p99 ms |", "|---|---|---|"]
    for key, value in sorted(report["results"].items()):
        group, system, load = key.split("|")
        if group == "unary-1":
            continue
        m = value["median"]
        shape = "256 texts per call" if group == "unary-256" else "1 text per call, open loop"
        lines.append(f"| {system}, {shape}, {load} | {m['texts_per_s']:.0f} | {m['p50_ms']:.2f} / {m['p99_ms']:.2f} |")
    for name, value in report["in_process"].items():
        lines.append(f"| in-process {name.replace('_', ' ')} texts per call | {value['texts_per_s']:.0f} | "
                     f"{value['p50_ms']:.3f} per call / - |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for check in report["acceptance"]:
        lines.append(f"| {check['check']} {check['target']} | {check['value']} | {'yes' if check['met'] else 'no'} |")
    return "\n".join(lines) + "\n"
