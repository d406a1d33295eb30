"""Faults a running server meets: bad models published under load, debris of killed trainings, floods of idle
connections. Each kept as a regression test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from tlserve.client import Classifier

from conftest import (
    Trained,
    call_until,
    idle_connections,
    metric,
    open_file_room,
    start_server,
    stops_cleanly,
    tiny_repository,
    wait_until,
)

# --- a bad model never takes serving down ------------------------------------------------------------------------


def _reshaped_graph(source: Path, target: Path, kind: str) -> None:
    """The good graph with its output reshaped as a buggy exporter would: [n, 12], [n, 10, 1] or [n, 5]."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(source))
    graph = model.graph
    raw = "probabilities_raw"
    for node in graph.node:
        node.output[:] = [raw if name == "probabilities" else name for name in node.output]
    if kind == "wide":  # two extra columns of zeros: rows still sum to 1
        graph.initializer.append(helper.make_tensor("pads", TensorProto.INT64, [4], [0, 0, 0, 2]))
        graph.node.append(helper.make_node("Pad", [raw, "pads"], ["probabilities"]))
        shape: list[Any] = ["n", 12]
    elif kind == "deep":
        graph.initializer.append(helper.make_tensor("axes", TensorProto.INT64, [1], [2]))
        graph.node.append(helper.make_node("Unsqueeze", [raw, "axes"], ["probabilities"]))
        shape = ["n", 10, 1]
    else:  # the first five columns, renormalised: a valid distribution over too few labels
        for name, values in (("starts", [0]), ("ends", [5]), ("slice_axes", [1]), ("sum_axes", [1])):
            graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], values))
        graph.node.append(helper.make_node("Slice", [raw, "starts", "ends", "slice_axes"], ["five"]))
        graph.node.append(helper.make_node("ReduceSum", ["five", "sum_axes"], ["total"], keepdims=1))
        graph.node.append(helper.make_node("Div", ["five", "total"], ["probabilities"]))
        shape = ["n", 5]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape))
    onnx.save(model, str(target))


def _publish_bad(good: Path, model_dir: Path, version: int, kind: str) -> None:
    """A version copied from a good one with a reshaped graph and a manifest whose sha256 values match."""
    staging = model_dir / f".staging-bad-{version}"
    shutil.copytree(good, staging)
    (staging / "model.onnx").unlink()
    _reshaped_graph(good / "model.onnx", staging / "model.onnx", kind)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest.update(model=model_dir.name, version=version)
    manifest["files"]["model.onnx"] = hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest()
    (staging / "manifest.json").write_text(json.dumps(manifest))
    os.rename(staging, model_dir / str(version))


def test_bad_model_shapes_published_under_load_are_refused_and_the_previous_version_serves(
        trained: Trained, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(trained.repository / "_stores", repository / "_stores")
    model_dir = repository / "hot"
    model_dir.mkdir()
    shutil.copytree(trained.frozen.path, model_dir / "1")
    manifest = json.loads((model_dir / "1" / "manifest.json").read_text())
    (model_dir / "1" / "manifest.json").write_text(json.dumps({**manifest, "model": "hot"}))
    server = start_server(repository, tmp_path / "server.log", "--poll-seconds", "0.2")
    answers: list[int] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        for version, kind in ((2, "wide"), (3, "deep"), (4, "narrow")):
            await asyncio.to_thread(_publish_bad, trained.frozen.path, model_dir, version, kind)
        await asyncio.to_thread(wait_until, lambda: metric(server, "tlserve_model_load_failures_total") == 3,
                                "the three bad versions are refused")
        answered = len(answers)
        await asyncio.to_thread(wait_until, lambda: len(answers) >= answered + 50, "50 more answers")
        stop.set()

    async def run() -> None:
        await asyncio.gather(publish(), call_until(stop, server.target, "hot", answers, failures))

    try:
        asyncio.run(run())
        assert failures == [], failures[:3]
        assert set(answers) == {1}
        with Classifier(server.target) as client:
            assert list(client.model("hot").versions) == [1]
    finally:
        assert server.stop() == 0
    log = server.output()
    assert "[n, 10] for the 10 labels" in log or "expected [1, 10]" in log
    assert log.count("refused") >= 3 and "Traceback" not in log


def test_server_reports_and_removes_staging_folders_whose_writer_is_gone(trained: Trained, tmp_path: Path) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(trained.repository, repository)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = repository / "wn-frozen" / f".staging-{socket.gethostname()}-{gone.pid}-abc123"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"partial")
    server = start_server(repository, tmp_path / "server.log")
    try:
        wait_until(lambda: not stale.exists(), "the stale staging folder is removed")
    finally:
        assert server.stop() == 0
    assert f"removed {stale}" in server.output()


# --- connections: a flood of idle connections locks nobody out ---------------------------------------------------


def test_two_thousand_idle_connections_at_a_soft_limit_of_1024_lock_nobody_out(tiny_store: Path, tmp_path: Path
                                                                               ) -> None:
    with open_file_room() as hard:
        server = start_server(tiny_repository(tmp_path / "repo", tiny_store), tmp_path / "server.log",
                              launcher=["prlimit", f"--nofile=1024:{hard}"])
        try:
            with Classifier(server.target, model="tiny", retries=0, timeout=10) as existing:
                assert existing.classify(["before"])[0].labels
                with idle_connections(server.port, 2000):
                    for _ in range(20):
                        assert existing.classify(["an existing connection"])[0].labels
                    with Classifier(server.target, model="tiny", retries=0, timeout=10) as new:
                        for _ in range(20):
                            assert new.classify(["a new connection"])[0].labels
        finally:
            stops_cleanly(server)
