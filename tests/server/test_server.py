"""The real server as a subprocess on loopback, driven through the real client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from tlserve.client import AsyncClassifier, Classifier, ClassifierError
from tlserve.contract.v1 import classifier_pb2 as pb
from tlserve.contract.v1 import classifier_pb2_grpc as pb_grpc
from tlserve.core.bundle import Bundle
from tlserve.core.features import OUTPUT, Featurizer
from tlserve.core.preprocessing import Preprocessor
from tlserve.core.vector_store import VectorStore

from conftest import ServerProcess, Trained, classify_status, metric, start_server, wait_until

TEXTS = [
    "a domesticated carnivorous mammal with soft fur",
    "a hand tool with a heavy head for driving nails",
    "a person who writes computer programs",
    "a tall perennial woody plant",
    "",
    "猫是一种小型哺乳动物 🐱",
]


def in_process(repository: Path, model: str, texts: list[str]) -> tuple[np.ndarray, list[str]]:
    """Probabilities computed here with the bundle's files and onnxruntime, no server."""
    version = max(int(p.name) for p in (repository / model).iterdir() if p.name.isdigit())
    bundle = Bundle.open(repository / model / str(version))
    store = VectorStore(bundle.store_path(repository))
    sif = np.load(bundle.path / "sif_weights.npy") if bundle.features.sif else None
    lexicon = bundle.lexicon() if bundle.features.lexical else None
    trained = bundle.trained_rows(len(store)) if bundle.features.mode == "finetune" else None
    featurizer = Featurizer(bundle.features, Preprocessor(bundle.preprocessing), store.index, store.matrix, sif,
                            lexicon, trained)
    session = ort.InferenceSession(str(bundle.model_file), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT], featurizer.encode(texts).inputs)[0], bundle.labels


def mapping_stats(pid: int, needle: str) -> dict[str, int]:
    """Sums /proc/PID/smaps fields (kB) over the mappings whose path contains `needle`."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = needle in line
        elif inside and len(head) >= 2 and head[0].endswith(":") and head[1].isdigit():
            totals[head[0][:-1]] = totals.get(head[0][:-1], 0) + int(head[1])
    return totals


@pytest.mark.parametrize("model", ["wn-frozen", "wn-finetune"])
def test_end_to_end_matches_in_process_onnxruntime(server: ServerProcess, trained: Trained, model: str) -> None:
    with Classifier(server.target, model=model) as client:
        results = client.classify(TEXTS)
    expected, labels = in_process(trained.repository, model, TEXTS)
    assert len(results) == len(TEXTS)
    for result, row in zip(results, expected, strict=True):
        got = {item.label: item.probability for item in result.labels}
        assert set(got) == set(labels)
        assert abs(sum(got.values()) - 1.0) <= 1e-5
        assert max(abs(got[label] - float(row[i])) for i, label in enumerate(labels)) <= 1e-6
        assert result.label == labels[int(row.argmax())]
        assert [item.probability for item in result.labels] == sorted(got.values(), reverse=True)
    assert results[4].token_count == 0 and results[4].oov_fraction == 0.0  # the empty text
    assert results[0].token_count == 7
    if model == "wn-frozen":  # every word is in the 40k store; finetune keeps a smaller vocabulary
        assert results[0].oov_fraction == 0.0
    assert results[5].token_count >= 5  # Chinese characters are tokens, never one blob


def test_top_k_version_and_model_info(server: ServerProcess, trained: Trained) -> None:
    with Classifier(server.target) as client:
        top = client.classify(TEXTS[:2], model="wn-frozen", top_k=2)
        assert [len(r.labels) for r in top] == [2, 2]
        assert top[0].version == 1 and top[0].model == "wn-frozen"
        pinned = client.classify(TEXTS[:1], model="wn-frozen", version=1)
        assert pinned[0].version == 1
        models = {info.name: info for info in client.models()}
        assert set(models) == {"wn-frozen", "wn-finetune"}
        frozen = models["wn-frozen"]
        assert frozen.mode == "frozen" and frozen.vector_store.shared and frozen.vector_store.size == 40_000
        # A finetune model reads the same shared store (its bundle holds only the rows it trained).
        assert models["wn-finetune"].vector_store.shared and models["wn-finetune"].vector_store.size == 40_000
        assert list(frozen.labels) == Bundle.open(trained.frozen.path).labels and len(frozen.labels) == 10
        assert frozen.metrics["test_accuracy"] > 0.3
        assert frozen.limits.max_texts_per_request == 1024
        assert client.model("wn-finetune").versions == [1]


def test_batching_500_concurrent_calls_each_get_their_own_answer(server: ServerProcess, trained: Trained) -> None:
    import csv

    from conftest import WORDNET_SAMPLE

    with open(WORDNET_SAMPLE, encoding="utf-8") as handle:
        texts = list(dict.fromkeys(row["text"] for row in csv.DictReader(handle)))[:500]
    assert len(texts) == 500
    expected, labels = in_process(trained.repository, "wn-frozen", texts)
    before = metric(server, "tlserve_batch_size_count", model="wn-frozen")
    before_sum = metric(server, "tlserve_batch_size_sum", model="wn-frozen")

    async def run() -> list[list[float]]:
        async with AsyncClassifier(server.target, model="wn-frozen") as client:
            answers = await asyncio.gather(*(client.classify([text]) for text in texts))
        return [[{i.label: i.probability for i in a[0].labels}[label] for label in labels] for a in answers]

    got = np.array(asyncio.run(run()))
    assert np.abs(got - expected).max() <= 1e-6
    batches = metric(server, "tlserve_batch_size_count", model="wn-frozen") - before
    batched_texts = metric(server, "tlserve_batch_size_sum", model="wn-frozen") - before_sum
    assert batched_texts == 500
    assert batches < 500, "no batch held more than one text"


def test_large_request_is_split_into_batches(server: ServerProcess, trained: Trained) -> None:
    texts = [f"{TEXTS[i % 4]} number {i}" for i in range(300)]  # > max_batch_size (64)
    with Classifier(server.target, model="wn-finetune") as client:
        results = client.classify(texts)
    expected, labels = in_process(trained.repository, "wn-finetune", texts)
    got = np.array([[{i.label: i.probability for i in r.labels}[label] for label in labels] for r in results])
    assert np.abs(got - expected).max() <= 1e-6


def test_stream_answers_in_order(server: ServerProcess) -> None:
    batches = [[TEXTS[i % 4]] for i in range(50)] + [[]] + [[TEXTS[0]]]
    with Classifier(server.target, model="wn-frozen") as client:
        stream = client.classify_stream(batches[:50])
        answers = list(stream)
        assert [a[0].label for a in answers] == [answers[i % 4][0].label for i in range(50)]
    # A bad request inside a stream is answered with an error; the stream stays usable.
    channel = grpc.insecure_channel(server.target)
    stub = pb_grpc.ClassifierStub(channel)
    requests = [pb.ClassifyRequest(model="wn-frozen", texts=texts, request_id=str(i))
                for i, texts in enumerate(batches)]
    responses = list(stub.ClassifyStream(iter(requests), timeout=30))
    channel.close()
    assert [r.request_id for r in responses] == [str(i) for i in range(len(batches))]
    assert responses[50].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(responses[51].results) == 1 and not responses[51].HasField("error")


def _status(server: ServerProcess, **request: object) -> tuple[grpc.StatusCode, str]:
    channel = grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)])
    timeout = request.pop("timeout", 10)
    try:
        pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(**request), timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    finally:
        channel.close()
    return grpc.StatusCode.OK, ""


def _health_or_none(client: Classifier) -> str | None:
    try:
        return client.health()
    except ClassifierError:
        return None  # not listening yet


def _still_serving(server: ServerProcess) -> None:
    with Classifier(server.target, model="wn-frozen") as client:
        assert client.classify(["still serving"])[0].labels


@pytest.mark.parametrize(
    ("request_fields", "code", "needle"),
    [
        ({"model": "no-such-model", "texts": ["x"]}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
        ({"model": "wn-frozen", "version": 99, "texts": ["x"]}, grpc.StatusCode.NOT_FOUND, "version 99"),
        ({"model": "../etc", "texts": ["x"]}, grpc.StatusCode.NOT_FOUND, "invalid model name"),
        ({"model": "wn-frozen", "texts": []}, grpc.StatusCode.INVALID_ARGUMENT, "texts is empty"),
        ({"model": "wn-frozen", "texts": ["x"] * 1025}, grpc.StatusCode.INVALID_ARGUMENT, "max_texts_per_request=1024"),
        ({"model": "wn-frozen", "texts": ["ok", "é" * 8193]}, grpc.StatusCode.INVALID_ARGUMENT,
         "texts[1] has 16386 UTF-8 bytes; the limit is max_text_bytes=16384"),
    ],
)
def test_errors_have_the_right_status_and_the_server_keeps_serving(
    server: ServerProcess, request_fields: dict[str, object], code: grpc.StatusCode, needle: str
) -> None:
    got, details = _status(server, **request_fields)
    assert got == code, details
    assert needle in details
    _still_serving(server)


def test_text_at_the_byte_limit_is_accepted(server: ServerProcess) -> None:
    assert _status(server, model="wn-frozen", texts=["a" * 16384])[0] == grpc.StatusCode.OK


# A 60 s batching delay holds queued texts until a later call flushes them (or the server
# stops): what these tests check happens on events they cause, never after a guessed time.
HOLD = ("--max-queue-delay-us", "60000000")


def _flush(server: ServerProcess) -> None:
    """A call that fills a batch of 64 texts runs at once, with whatever was queued before it."""
    with Classifier(server.target, model="wn-frozen", retries=0, timeout=60) as client:
        assert len(client.classify(["flush"] * 64)) == 64


def _queued(server: ServerProcess, texts: int) -> Callable[[], bool]:
    return lambda: metric(server, "tlserve_queued_texts", model="wn-frozen") == texts


def test_deadline_exceeded_and_work_dropped(trained: Trained, tmp_path: Path) -> None:
    # The held text outlives its deadline in the queue: it must be dropped, not classified.
    proc = start_server(trained.repository, tmp_path / "server.log", *HOLD)
    try:
        code, _ = _status(proc, model="wn-frozen", texts=["late"], timeout=0.5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        _flush(proc)  # runs after the expired text's turn in the queue
        assert metric(proc, "tlserve_texts_total", model="wn-frozen") == 64, "expired work reached inference"
        expired = sum(metric(proc, "tlserve_requests_total", model="wn-frozen", code=code)
                      for code in ("DEADLINE_EXCEEDED", "CANCELLED"))
        assert expired == 1, "the expired call was not seen by tlserve"
        _flush(proc)  # and it still serves
    finally:
        assert proc.stop() == 0


def test_cancelled_call_is_dropped_before_inference(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", *HOLD)
    try:
        async def cancel_one() -> None:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                call = pb_grpc.ClassifierStub(channel).Classify(pb.ClassifyRequest(model="wn-frozen", texts=["x"]))
                await asyncio.to_thread(wait_until, _queued(proc, 1), "the call is queued")
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call

        asyncio.run(cancel_one())
        wait_until(lambda: metric(proc, "tlserve_requests_total", model="wn-frozen", code="CANCELLED") == 1,
                   "tlserve saw the cancellation")
        _flush(proc)
        assert metric(proc, "tlserve_texts_total", model="wn-frozen") == 64, "cancelled work reached inference"
        _flush(proc)  # and it still serves
    finally:
        assert proc.stop() == 0


def test_cancelled_stream_releases_its_queued_work(trained: Trained, tmp_path: Path) -> None:
    # Held far beyond wait_until's limit: the queue empties only because the cancel released it.
    proc = start_server(trained.repository, tmp_path / "server.log", "--max-queue-delay-us", "3600000000")
    try:
        async def cancel_stream() -> None:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                call = pb_grpc.ClassifierStub(channel).ClassifyStream()
                for i in range(5):
                    await call.write(pb.ClassifyRequest(model="wn-frozen", texts=[f"text {i}"], request_id=str(i)))
                await asyncio.to_thread(wait_until, _queued(proc, 5), "the stream's 5 texts are queued")
                call.cancel()

        asyncio.run(cancel_stream())
        wait_until(_queued(proc, 0), "the cancelled stream's texts left the queue")
        _flush(proc)
        assert metric(proc, "tlserve_texts_total", model="wn-frozen") == 64, "a cancelled stream's work ran"
        _flush(proc)  # and it still serves
    finally:
        assert proc.stop() == 0


def test_classify_verb_reads_stdin_and_prints_json_lines(server: ServerProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tlserve.cli", "classify", "--target", server.target, "--model", "wn-frozen",
         "--top-k", "1"], input="a small cat\n\na tall tree\n", capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 0, result.stderr
    assert [line["text"] for line in lines] == ["a small cat", "", "a tall tree"]
    assert all(len(line["labels"]) == 1 and line["model"] == "wn-frozen" for line in lines)


def test_queue_full_is_resource_exhausted(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", "--max-queue-size", "8",
                        "--max-queue-delay-us", "200000")
    try:
        async def burst() -> list[grpc.StatusCode]:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                stub = pb_grpc.ClassifierStub(channel)

                return await asyncio.gather(*(classify_status(stub, pb.ClassifyRequest(
                    model="wn-frozen", texts=[f"t{i}"] * 4), 10) for i in range(10)))

        codes = asyncio.run(burst())
        assert codes.count(grpc.StatusCode.OK) >= 2
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        _still_serving(proc)
    finally:
        assert proc.stop() == 0


def gated_repository(trained: Trained, folder: Path) -> tuple[Path, Path, bytes]:
    """A repository whose shared store's manifest is a named pipe: loading blocks on it until
    the test writes the manifest, so the test decides when the server finishes loading."""
    stores = folder / "_stores"
    shutil.copytree(trained.repository / "_stores", stores, copy_function=os.link)
    version = folder / "many" / "1"
    shutil.copytree(trained.frozen.path, version, copy_function=os.link)  # hard links: cheap
    renamed = {**json.loads((version / "manifest.json").read_text()), "model": "many"}
    (version / "manifest.json").unlink()  # a new file, not a write through the link to the source
    (version / "manifest.json").write_text(json.dumps(renamed))
    manifest = next(stores.glob("*/manifest.json"))
    content = manifest.read_bytes()
    manifest.unlink()
    os.mkfifo(manifest)
    return folder, manifest, content


def test_health_reflection_and_metrics(trained: Trained, tmp_path: Path) -> None:
    repository, gate, content = gated_repository(trained, tmp_path / "repo")
    proc = start_server(repository, tmp_path / "server.log", wait=False)
    released = False
    try:
        with Classifier(proc.target, timeout=5) as client:
            # The port answers health while the model is still loading (held at the gate)...
            wait_until(lambda: _health_or_none(client) == "NOT_SERVING", "NOT_SERVING while loading")
            assert client.health("tlserve.v1.Classifier") == "NOT_SERVING"
            gate.write_bytes(content)  # ...and SERVING once loading could finish.
            released = True
            assert client.wait_until_serving(120) == "SERVING"
            assert client.health("tlserve.v1.Classifier") == "SERVING"
            assert client.health("tlserve.v1.Classifier/many") == "SERVING"
            assert client.health("tlserve.v1.Classifier/unknown") == "SERVICE_UNKNOWN"
            before = metric(proc, "tlserve_requests_total", model="many", code="OK")
            client.classify(["a cat"], model="many")
            client.classify(["a dog"], model="many")
            assert metric(proc, "tlserve_requests_total", model="many", code="OK") == before + 2
            assert metric(proc, "tlserve_tokens_total", model="many", kind="all") >= 4
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        with grpc.insecure_channel(proc.target) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            answer = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                list_services="")]))))
            names = {service.name for service in answer.list_services_response.service}
        assert {"tlserve.v1.Classifier", "grpc.health.v1.Health"} <= names
    finally:
        if not released:  # let a loader blocked at the gate finish, so the server can stop
            with contextlib.suppress(OSError):
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, content)
                os.close(fd)
        assert proc.stop() == 0
    log = proc.output()
    assert "SERVING on" in log and "stopped" in log


def test_tensorflow_is_never_imported_by_the_server(server: ServerProcess) -> None:
    # The server process' loaded modules, read from outside through /proc maps.
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "tensorflow" not in maps and "libtensorflow" not in maps


def test_server_imports_no_tensorflow_module() -> None:
    code = ("import sys, tlserve.server.workers, tlserve.server.assembly, tlserve.server.core.lifecycle; "
            "import tlserve.server.frontends.grpc.native, tlserve.server.frontends.grpc.oip, tlserve.core.scorer; "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sigterm_finishes_calls_in_flight_and_exits_zero(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", *HOLD)

    async def calls() -> list[str]:
        async with AsyncClassifier(proc.target, model="wn-frozen", retries=0) as client:
            tasks = [asyncio.ensure_future(client.classify([f"text {i}"])) for i in range(20)]
            await asyncio.to_thread(wait_until, _queued(proc, 20), "the 20 calls are queued")
            proc.process.terminate()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        return ["ok" if isinstance(r, list) else repr(r) for r in results]

    outcomes = asyncio.run(calls())
    assert outcomes == ["ok"] * 20
    assert proc.process.wait(30) == 0
    assert "shutting down" in proc.output()


def test_two_workers_and_two_models_share_one_store(trained: Trained, tmp_path: Path) -> None:
    snapshots = tmp_path / "snapshots"
    proc = start_server(trained.repository, tmp_path / "server.log", "--workers", "2", "--snapshot-dir",
                        str(snapshots))
    try:
        with Classifier(proc.target, model="wn-frozen") as client:
            for _ in range(20):
                assert client.classify(["a small feline"])[0].labels
        forked = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.process.pid)], capture_output=True,
                                                     text=True).stdout.split()]
        workers = [proc.process.pid, *forked]  # the first worker is the process started
        assert len(workers) == 2
        # The server's verified copy of the repository's store, made once for both workers.
        (store,) = (path for path in snapshots.glob("tlserve-snapshots-*/*") if path.is_dir() and
                    path.name != "files")
        for pid in workers:
            stats = mapping_stats(pid, str(store.resolve()))
            assert stats.get("Size", 0) > 0, f"worker {pid} does not map the shared store"
            # File-backed, read-only: the workers share the page cache's pages, never copy them (a copy would be
            # anonymous memory; pages of the fresh copy not yet written back count as dirty, not as copies).
            assert stats.get("Anonymous", 0) == 0, stats
        assert metric(proc, "tlserve_requests_total", model="wn-frozen", code="OK") == 20
    finally:
        assert proc.stop() == 0


def test_repository_with_json_logs(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", "--log-format", "json")
    assert proc.stop() == 0
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    assert any("SERVING on" in line["message"] for line in lines)


def test_a_dead_worker_stops_the_whole_server_without_orphans(trained: Trained, tmp_path: Path) -> None:
    proc = start_server(trained.repository, tmp_path / "server.log", "--workers", "2")
    forked = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(proc.process.pid)], capture_output=True,
                                                 text=True).stdout.split()]
    assert len(forked) == 1
    os.kill(forked[0], signal.SIGKILL)
    code = proc.process.wait(60)
    assert code != 0, "the server went on with a worker missing"
    assert "exited with -9; stopping the others" in proc.output()
    assert not Path(f"/proc/{forked[0]}").exists()


def test_a_connection_past_its_max_age_is_closed_and_the_client_reconnects(trained: Trained, tmp_path: Path) -> None:
    """--max-connection-age-seconds: the server sends GOAWAY, the channel leaves READY (with DNS round-robin, it
    resolves the name again then), and the next call succeeds on a new connection."""
    import queue

    server = start_server(trained.repository, tmp_path / "server.log", "--max-connection-age-seconds", "1")
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            request = pb.ClassifyRequest(model="wn-frozen", texts=["a small dog"])
            assert stub.Classify(request, timeout=30).results
            states: queue.Queue[grpc.ChannelConnectivity] = queue.Queue()
            channel.subscribe(states.put, try_to_connect=False)
            seen = [states.get(timeout=60)]
            while seen[-1] == grpc.ChannelConnectivity.READY:
                seen.append(states.get(timeout=60))  # the server closes the connection: the channel goes IDLE
            assert seen[-1] in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.TRANSIENT_FAILURE), seen
            assert stub.Classify(request, timeout=30).results
    finally:
        assert server.stop() == 0
