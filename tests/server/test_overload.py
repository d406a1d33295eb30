"""Overload and shutdown under load, on a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from tlserve.client import Classifier
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc

from conftest import Trained, classify_status, metric, start_server, wait_until


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def burst(target: str, calls: int, texts_per_call: int) -> list[grpc.StatusCode]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        texts = [f"a small animal that lives in the forest {i}" for i in range(texts_per_call)]

        async def one() -> grpc.StatusCode:
            try:
                await stub.Classify(pb.ClassifyRequest(model="wn-frozen", texts=texts), timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        return await asyncio.gather(*(one() for _ in range(calls)))


def test_burst_beyond_capacity_is_refused_with_bounded_memory_then_recovers(trained: Trained, tmp_path: Path
                                                                            ) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", "--max-queue-size", "512")
    try:
        baseline = peak_rss_mb(proc.process.pid)
        # 64 texts per call: each call costs the server far more than sending it costs the
        # client, so the burst outruns the server however fast either side is today.
        codes = asyncio.run(burst(proc.target, calls=1000, texts_per_call=64))  # 64,000 texts at once
        peak = peak_rss_mb(proc.process.pid)
        refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        served = codes.count(grpc.StatusCode.OK)
        # gRPC core sheds what goes past its own limits before the application sees it: streams
        # that pile up on one connection (CANCELLED) and streams opened past
        # --max-concurrent-streams (1024) before the client learnt the limit (refused:
        # UNAVAILABLE, which clients retry). Everything that reaches tlserve is served or
        # refused with RESOURCE_EXHAUSTED.
        shed = codes.count(grpc.StatusCode.CANCELLED) + codes.count(grpc.StatusCode.UNAVAILABLE)
        print(f"burst: {served} served, {refused} RESOURCE_EXHAUSTED, {shed} shed by gRPC, "
              f"peak RSS {peak:.0f} MB (before {baseline:.0f} MB)")
        assert served + refused + shed == len(codes), set(codes)
        assert refused > 0 and served > 0
        assert peak < baseline + 400, "memory grew with the burst"
        with Classifier(proc.target, model="wn-frozen", retries=0) as client:  # recovery: at once, every call
            for _ in range(50):
                assert client.classify(["a small cat"])[0].labels
    finally:
        assert proc.stop() == 0


def test_sigterm_under_load_loses_no_accepted_call(trained: Trained, tmp_path: Path) -> None:
    # A 60 s batching delay holds every call until SIGTERM (the drain runs what is queued).
    proc = start_server(trained.repository, tmp_path / "server.log", "--max-queue-delay-us", "60000000",
                        "--max-batch-size", "2048", "--grace-seconds", "60")

    async def load() -> tuple[list[grpc.StatusCode], list[grpc.StatusCode]]:
        async with grpc.aio.insecure_channel(proc.target) as channel:
            stub = pb_grpc.ClassifierStub(channel)

            def one(i: int) -> Any:
                return classify_status(stub, pb.ClassifyRequest(model="wn-frozen", texts=[f"text {i}"] * 8), 60)

            # 150 calls x 8 texts: SIGTERM once the server holds them all (queue 2,048 texts).
            first = [asyncio.ensure_future(one(i)) for i in range(150)]
            await asyncio.to_thread(wait_until, lambda: metric(proc, "tlserve_queued_texts", model="wn-frozen") == 1200,
                                    "the 150 calls are queued")
            early = [call.result() for call in first if call.done()]
            assert not early, f"answered before SIGTERM: {early[:3]}"
            proc.process.terminate()
            await asyncio.sleep(0.2)
            later = [asyncio.ensure_future(one(i)) for i in range(50)]  # after SIGTERM: refused or served
            return list(await asyncio.gather(*first)), list(await asyncio.gather(*later))

    accepted, later = asyncio.run(load())
    assert proc.process.wait(30) == 0
    assert set(accepted) == {grpc.StatusCode.OK}, {c: accepted.count(c) for c in set(accepted)}
    # Calls sent after SIGTERM were never accepted: served, or refused by the stopping server.
    assert set(later) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, set(later)
    log = proc.output()
    assert log.index("shutting down") < log.index("stopped")


def test_soak_command_reports_errors_p99_and_rss(trained: Trained, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "-m", "tlserve.cli", "soak", "--repository", str(trained.repository), "--model", "wn-frozen",
         "--minutes", "0.1", "--interval", "2", "--peak-seconds", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["errors"] == 0 and report["summary"]["calls"] > 100
    assert len(report["intervals"]) >= 2
    assert all(row["rss_mb"] > 10 and row["p99_ms"] > 0 for row in report["intervals"])
