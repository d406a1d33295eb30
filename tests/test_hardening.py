"""What a careless user or an attacker tried, each kept as a regression test.

Grouped by finding: bad models published under load, data loss on import, training with many
classes, debris of killed runs, connection floods, large requests and streams that never read,
input files misread, errors that were tracebacks, help that disagreed with behaviour.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tlserve.client import Classifier
from tlserve.errors import InputFileError

from conftest import (
    ROOT,
    WORDNET_SAMPLE,
    BatchRecorder,
    Trained,
    call_until,
    metric,
    start_server,
    wait_until,
)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tlserve.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


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


# --- vectors import never deletes what it did not write ----------------------------------------------------------


def _tiny_vec(path: Path) -> Path:
    path.write_text("3 2\ncat 1 0\ndog 0 1\ntree 1 1\n")
    return path


def test_vector_import_never_deletes_a_folder_it_did_not_write(tmp_path: Path) -> None:
    source = _tiny_vec(tmp_path / "good.vec")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    result = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(victim), "--no-progress")
    assert result.returncode == 2 and "not a vector store" in result.stderr and str(victim) in result.stderr
    assert (victim / "thesis.tex").read_text() == "years of work"

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    result = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(a_file), "--no-progress")
    assert result.returncode == 2 and "not a folder" in result.stderr and a_file.read_text() == "keep me"

    store = tmp_path / "store"
    assert cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store),
               "--no-progress").returncode == 0
    again = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store), "--no-progress")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "good.vec").write_text("2 2\ncat 1 0\nbird 0 1\n")
    replaced = cli("vectors", "import", str(source), "--format", "word2vec", "--out", str(store), "--no-progress",
                   "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (store / "vocab.txt").read_text().split() == ["cat", "bird"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging debris left behind"


# --- many classes: bounded figures and report ---------------------------------------------------------------------


def test_many_classes_train_with_bounded_figures_and_report(glove_store: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "many.csv"
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as source:
        rows = [row["text"] for row in csv.DictReader(source)]
    with open(data, "w") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(300 * 3):
            writer.writerow([rows[i % len(rows)], f"class {i // 3}"])
    result = cli("--log-level", "WARNING", "train", "--data", str(data), "--vectors", str(glove_store),
                 "--repository", str(tmp_path / "repo"), "--model", "many", "--mode", "frozen", "--epochs", "2",
                 "--hidden", "16", "--no-progress", "--test-fraction", "0.34", "--validation-fraction", "0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    version = tmp_path / "repo" / "many" / "1"
    with Image.open(version / "confusion.png") as figure:
        assert max(figure.size) <= 1200, figure.size  # a full matrix would be over 12,000 pixels wide
    report = json.loads((version / "report.json").read_text())
    assert "cells" in report["test"]["confusion"] and "matrix" not in report["test"]["confusion"]
    assert (version / "report.json").stat().st_size < 1_000_000


# --- no debris from killed runs; a blocking folder is skipped and named ------------------------------------------


def _train_args(store: Path, repository: Path, *extra: str) -> list[str]:
    return ["--log-level", "WARNING", "train", "--data", str(WORDNET_SAMPLE), "--vectors", str(store),
            "--repository", str(repository), "--model", "wn", "--mode", "frozen", "--epochs", "3",
            "--patience", "3", "--hidden", "32", "--no-progress", *extra]


def _staging(repository: Path) -> list[Path]:
    return sorted((repository / "wn").glob(".staging-*")) if (repository / "wn").is_dir() else []


def test_killed_training_leaves_no_debris_and_a_blocking_folder_is_skipped(glove_store: Path, tmp_path: Path
                                                                           ) -> None:
    repository = tmp_path / "repo"
    # SIGTERM while a version is being written: the run removes its own staging folder.
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", *_train_args(glove_store, repository)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: bool(_staging(repository)) or process.poll() is not None, "a staging folder appears")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    left_by_term = [sorted(p.name for p in f.rglob("*")) for f in _staging(repository)]
    assert left_by_term == [], f"SIGTERM left a staging folder (exit {process.returncode}): {stderr[-2000:]}"

    # SIGKILL cannot be caught: the next run removes what the killed one left, and says so.
    process = subprocess.Popen([sys.executable, "-m", "tlserve.cli", *_train_args(glove_store, repository)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: bool(_staging(repository)) or process.poll() is not None, "a staging folder appears")
    left = _staging(repository)
    process.kill()
    process.wait(60)
    assert left and all(folder.exists() for folder in left)

    # A numbered folder without a manifest (here 5/) must not block publishing.
    (repository / "wn" / "5").mkdir(parents=True)
    (repository / "wn" / "5" / "model.onnx").write_bytes(b"half a copy")
    result = cli(*_train_args(glove_store, repository, "--epochs", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (repository / "wn" / "6" / "manifest.json").is_file()
    assert "removed" in result.stderr and str(left[0]) in result.stderr
    assert str(repository / "wn" / "5") in result.stderr
    assert _staging(repository) == []


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


def test_two_thousand_idle_connections_at_a_soft_limit_of_1024_lock_nobody_out(trained: Trained, tmp_path: Path
                                                                               ) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test process holds the sockets
    try:
        server = start_server(trained.repository, tmp_path / "server.log",
                              launcher=["prlimit", f"--nofile=1024:{hard}"])
        idle: list[socket.socket] = []
        try:
            with Classifier(server.target, model="wn-frozen", retries=0, timeout=10) as existing:
                assert existing.classify(["before"])[0].labels
                for _ in range(2000):
                    idle.append(socket.create_connection(("127.0.0.1", server.port)))
                for _ in range(20):
                    assert existing.classify(["an existing connection"])[0].labels
            with Classifier(server.target, model="wn-frozen", retries=0, timeout=10) as new:
                for _ in range(20):
                    assert new.classify(["a new connection"])[0].labels
        finally:
            for sock in idle:
                sock.close()
            assert server.stop() == 0
        assert "Too many open files" not in server.output()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- large requests, fair queueing, streams that never read ------------------------------------------------------


def test_a_small_call_is_not_queued_behind_the_chunks_of_a_large_one() -> None:
    from tlserve.server.core import loop_idle
    from tlserve.server.core.batching import DynamicBatcher

    recorder = BatchRecorder()
    batches = recorder.batches

    async def main() -> None:
        batcher = DynamicBatcher(recorder, 64, 1_000_000, 4096,  # type: ignore[arg-type]
                                 max_batch_chars=1 << 18)
        batcher.start()
        # Both calls are queued in the same loop turn, the large one first.
        large = asyncio.ensure_future(batcher.submit(["x" * 16_384] * 1023))
        small = asyncio.ensure_future(batcher.submit(["small"]))
        await asyncio.wait_for(asyncio.gather(large, small), 60)
        await batcher.close()

    loop_idle.run(main())
    first_with_small = next(i for i, batch in enumerate(batches) if "small" in batch)
    assert first_with_small == 0, f"the small call ran in batch {first_with_small} of {len(batches)}"
    assert max(sum(map(len, batch)) for batch in batches) <= 1 << 18  # the character budget held


def test_the_messages_of_a_stream_take_one_turn_beside_a_unary_call() -> None:
    """Two streams with 20 one-text messages queued each, then a unary call: the call runs in the first batch
    (one place per stream), not behind 40 messages counted as 40 callers."""
    from tlserve.server.core import loop_idle
    from tlserve.server.core.batching import DynamicBatcher

    recorder = BatchRecorder()
    batches = recorder.batches

    async def main() -> None:
        batcher = DynamicBatcher(recorder, 8, 1_000_000, 4096)  # type: ignore[arg-type]
        batcher.start()
        first, second = object(), object()
        calls = [asyncio.ensure_future(batcher.submit([f"{name}{i}"], flow=flow))
                 for name, flow in (("a", first), ("b", second)) for i in range(20)]
        calls.append(asyncio.ensure_future(batcher.submit(["unary"])))
        await asyncio.wait_for(asyncio.gather(*calls), 60)
        await batcher.close()

    loop_idle.run(main())
    assert "unary" in batches[0], batches
    assert batches[0][:3] == ["a0", "b0", "unary"] and batches[0][3:] == ["a1", "b1", "a2", "b2", "a3"]
    assert [t for b in batches for t in b if t.startswith("a")] == [f"a{i}" for i in range(20)]  # a flow keeps order


def test_a_small_call_runs_beside_a_large_batch_instead_of_after_it() -> None:
    """The inference thread holds a large batch (until the test opens its gate): a one-text call is answered
    meanwhile, on the event loop."""
    import threading

    from tlserve.scorer import Prediction
    from tlserve.server.core import loop_idle
    from tlserve.server.core.batching import DynamicBatcher

    gate, large_started = threading.Event(), threading.Event()

    class Gated:
        name = "m"

        def predict(self, texts: list[str]) -> Prediction:
            if len(texts) > 1:
                large_started.set()
                assert gate.wait(60)
            n = len(texts)
            return Prediction(np.full((n, 2), 0.5, np.float32), np.ones(n, np.int32), np.zeros(n, np.float32), 0, 0)

    async def main() -> bool:
        batcher = DynamicBatcher(Gated(), 64, 0, 4096, inline_batch_texts=4)  # type: ignore[arg-type]
        batcher.start()
        large = asyncio.ensure_future(batcher.submit(["x" * 4096] * 8))
        while not large_started.is_set():
            await asyncio.sleep(0.001)
        small = await asyncio.wait_for(batcher.submit(["small"]), 30)
        answered_while_large_ran = not large.done()
        gate.set()
        await large
        await batcher.close()
        return answered_while_large_ran and small.probabilities.shape == (1, 2)

    try:
        assert loop_idle.run(main())
    finally:
        gate.set()


def test_a_request_refused_for_a_full_queue_is_refused_before_its_texts_are_read() -> None:
    """Callers retrying large requests against a full queue: each refusal must not cost reading its texts."""
    from collections.abc import Sequence

    from tlserve.server.core import loop_idle
    from tlserve.server.core.batching import DynamicBatcher
    from tlserve.server.core.dataplane import DataPlane
    from tlserve.server.core.errors import ErrorCode, ServingError
    from tlserve.server.core.routing import RoutingTable, ServedVersion
    from tlserve.server.settings import ServerSettings

    class CountedTexts(Sequence[str]):
        reads = 0

        def __len__(self) -> int:
            return 200

        def __getitem__(self, index: Any) -> Any:
            CountedTexts.reads += 1
            return ["text"] * len(range(200)[index]) if isinstance(index, slice) else "text"

    async def main() -> ServingError:
        recorder = BatchRecorder()
        batcher = DynamicBatcher(recorder, 64, 0, 256, inline_batch_texts=4)  # type: ignore[arg-type]
        # Not started: what is submitted stays queued.
        queued = asyncio.ensure_future(batcher.submit(["queued"] * 200))
        await asyncio.sleep(0)
        assert batcher.queued_texts == 200
        served = ServedVersion(recorder, batcher)  # type: ignore[arg-type]
        table = RoutingTable()
        table.models["m"] = {1: served}
        plane = DataPlane(table, ServerSettings())
        plane.ready = True
        try:
            await plane.predict("m", 0, CountedTexts(), None)
        except ServingError as exc:
            return exc
        finally:
            queued.cancel()
        raise AssertionError("a request past max_queue_size was accepted")

    error = loop_idle.run(main())
    assert error.code is ErrorCode.RESOURCE_EXHAUSTED and "max_queue_size=256" in error.message
    assert CountedTexts.reads == 0


class _NoDeadline:
    """A servicer context without a deadline."""

    def time_remaining(self) -> None:
        return None


def _answering_plane() -> type:
    """A data plane (max_batch_size 64) that answers every text at once with 0.5 / 0.5: the stream's own logic alone."""
    from dataclasses import dataclass

    from tlserve.scorer import Prediction
    from tlserve.server.core.dataplane import Answer

    @dataclass
    class FakeScorer:
        name: str = "m"
        version: int = 1
        labels: tuple[str, ...] = ("a", "b")

        def __hash__(self) -> int:
            return id(self)

    scorer = FakeScorer()

    class Plane:
        class settings:
            max_batch_size = 64

        def model_label(self, name: str) -> str:
            return name

        async def predict(self, name: str, version: int, texts: Any, deadline: Any, flow: object = None) -> Answer:
            n = len(texts)
            return Answer(scorer, Prediction(np.full((n, 2), 0.5, np.float32), np.ones(n, np.int32),  # type: ignore
                                             np.zeros(n, np.float32), 0, 0))

    return Plane


def test_a_stream_whose_client_does_not_read_stops_being_read() -> None:
    """The client sends 100 requests of 64 texts and takes one answer: the server reads no more
    than it has room to answer (one batch of texts), instead of classifying all 100."""
    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.server.core import loop_idle
    from tlserve.server.frontends.grpc_native import ClassifierServicer

    Plane, Context = _answering_plane(), _NoDeadline

    pulled = 0

    async def requests() -> Any:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield pb.ClassifyRequest(model="m", texts=[f"text {i}"] * 64)

    async def main() -> int:
        stream = ClassifierServicer(Plane()).ClassifyStream(requests(), Context())  # type: ignore[arg-type]
        await stream.__anext__()  # one answer taken; then the client stops reading
        before = loop_idle.METER.waits
        while loop_idle.METER.waits < before + 3:  # the loop ran out of work: nothing more will happen
            await asyncio.sleep(0.001)
        await stream.aclose()
        return pulled

    assert loop_idle.run(main()) <= 2


def test_streams_share_one_batch_of_texts_in_flight() -> None:
    """A second stream that stops reading holds at most half a batch of one-text messages, not a whole one."""
    from tlserve.contract.v1 import classifier_pb2 as pb
    from tlserve.server.core import loop_idle
    from tlserve.server.frontends.grpc_native import ClassifierServicer

    Plane, Context = _answering_plane(), _NoDeadline

    pulled = {"a": 0, "b": 0}

    async def requests(name: str) -> Any:
        for i in range(500):
            pulled[name] += 1
            yield pb.ClassifyRequest(model="m", texts=[f"{name} {i}"])

    async def settle() -> None:
        before = loop_idle.METER.waits
        while loop_idle.METER.waits < before + 3:  # the loop ran out of work
            await asyncio.sleep(0.001)

    async def main() -> None:
        servicer = ClassifierServicer(Plane())  # type: ignore[arg-type]
        first = servicer.ClassifyStream(requests("a"), Context())  # type: ignore[arg-type]
        await first.__anext__()
        await settle()
        second = servicer.ClassifyStream(requests("b"), Context())  # type: ignore[arg-type]
        await second.__anext__()
        await settle()
        await first.aclose()
        await second.aclose()

    loop_idle.run(main())
    assert pulled["a"] <= 64 + 2  # alone: a batch's worth
    assert pulled["b"] <= 32 + 2, pulled  # beside it: half


# --- input files: misread silently no more ------------------------------------------------------------------------


def test_csv_row_spanning_lines_is_reported_with_its_first_line(tmp_path: Path) -> None:
    from tlserve.labelled import load_labelled

    lines = ["text,label"] + [f"text number {i},{'a' if i % 2 else 'b'}" for i in range(1, 300)]
    lines[150] = '"a stray quote opens here,a'  # line 151 of the file
    lines[151] = 'and closes at the end of this line",b'
    path = tmp_path / "stray.csv"
    path.write_text("\n".join(lines) + "\n")
    data = load_labelled(path)
    assert len(data) == 298  # the quoted field swallowed one row: legal CSV, and now said
    assert any("1 row(s) span several lines" in note and "line 151" in note for note in data.notes)


def test_tsv_quotes_are_plain_characters(tmp_path: Path) -> None:
    from tlserve.labelled import load_labelled

    lines = ["text\tlabel"] + [f"text {i}\t{'a' if i % 2 else 'b'}" for i in range(1, 300)]
    lines[21] = '"a stray quote\ta'  # line 22 of the file
    path = tmp_path / "stray.tsv"
    path.write_text("\n".join(lines) + "\n")
    data = load_labelled(path)
    assert len(data) == 299 and data.texts[20] == '"a stray quote' and data.lines[20] == 22


@pytest.mark.parametrize("label", ["1", "1.0", "null", "true", "[1, 2]", '{"a": 1}'])
def test_jsonl_labels_must_be_strings(label: str, tmp_path: Path) -> None:
    from tlserve.labelled import load_labelled

    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": ' + label + "}\n")
    with pytest.raises(InputFileError) as caught:
        load_labelled(path)
    assert caught.value.line == 2 and "labels are strings" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "fmt", "line", "needle"),
    [
        ("2 2\ncat 1 0\ndog 0 1\ntree 1 1\nbird 0 0\n", "fasttext", 4, "the header says 2 words but more rows follow"),
        ("", "glove", None, "the file is empty"),
        ("", "fasttext", None, "the file is empty"),
        ("a 1 2 3\nb 1 2\nc 3 4\nd 5 6\n", "glove", 1, "has 3 values; the dimension is 2"),
    ],
)
def test_vector_files_misread_or_tracebacks_name_file_and_line(content: str, fmt: str, line: int | None,
                                                               needle: str, tmp_path: Path) -> None:
    from tlserve.trainer.vectors import import_vectors

    source = tmp_path / "bad.vec"
    source.write_text(content)
    with pytest.raises(InputFileError) as caught:
        import_vectors(source, tmp_path / "store", fmt, progress=False)
    assert str(source) in str(caught.value) and needle in str(caught.value)
    assert caught.value.line == line


def test_a_folder_as_the_vector_file_is_named(tmp_path: Path) -> None:
    result = cli("vectors", "import", str(tmp_path), "--format", "glove", "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and "is a folder" in result.stderr and "Traceback" not in result.stderr


def test_truncated_long_texts_are_counted_and_reported(glove_store: Path, tmp_path: Path) -> None:
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as source:
        rows = list(csv.DictReader(source))
    for row in rows[::40]:  # 30 long texts over every class: some land in the training split
        row["text"] = " ".join(["cat"] * 5000)
    data = tmp_path / "long.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    result = cli("--log-level", "WARNING", "train", "--data", str(data), "--vectors", str(glove_store),
                 "--repository", str(tmp_path / "repo"), "--model", "long", "--mode", "frozen", "--epochs", "2",
                 "--no-progress", "--seed", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "repo" / "long" / "1" / "manifest.json").read_text())
    report = (tmp_path / "repo" / "long" / "1" / "report.md").read_text()
    truncated = manifest["training_data"]["truncated_texts"]
    assert 0 < truncated < 30
    assert f"{truncated} of " in result.stderr and "more than 4096 tokens" in result.stderr
    assert f"Long texts: {truncated} training texts" in report


# --- help agrees with behaviour ---------------------------------------------------------------------------------


def test_train_help_describes_auto_pooling_as_the_readme_does() -> None:
    out = cli("train", "--help").stdout
    assert "mean for finetune" not in out and "mixed with" in " ".join(out.split())
    assert "mixes their probabilities" in (ROOT / "docs" / "training.md").read_text()
